"""Turn outcomes into Kafka records for the processed topic and the DLQ. Pure."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson

from wa_worker.core import jsonbytes
from wa_worker.models.event_time import event_time
from wa_worker.models.headers import (
    DeadLetterHeaders,
    dropped,
    processed_headers,
    trace_headers,
)
from wa_worker.models.records import DeadLetter, ErrorClass, Outcome, Processed

# librdkafka counts a record's framing (and the broker its batch's) on top of key, value and
# headers; the margin keeps the size check on the safe side of `message.max.bytes`.
RECORD_OVERHEAD_BYTES = 512


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made
# building one cost four times as much, on every record. Nothing changes a record once built.
@dataclass(slots=True)
class KafkaRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    # (event key, outcome) to mark done in Redis once Kafka has the record.
    done: tuple[str, str] | None = None
    received_at: datetime | None = None
    error_class: str | None = None
    kind: str | None = None
    # For a processed record: its event's dead letter, built only if Kafka refuses the record.
    unwritable: partial[KafkaRecord] | None = None

    def log_context(self) -> dict[str, str]:
        """The DLQ headers worth a log line (names without the `wa-` prefix)."""
        return DeadLetterHeaders.log_context(self.headers)

    def size(self) -> int:
        """Bytes the record takes against `message.max.bytes`, framing margin included."""
        headers = sum(len(k) + len(v) for k, v in self.headers)
        return len(self.value) + len(self.key or b"") + headers + RECORD_OVERHEAD_BYTES


@dataclass(frozen=True)
class Topics:
    processed: str
    dlq: str
    inbound: str


def to_record(outcome: Outcome, topics: Topics, max_bytes: int) -> KafkaRecord:
    """The outcome's record. A handler result the worker cannot write (not JSON, or a record
    over `max_bytes`, KAFKA_MAX_MESSAGE_BYTES) makes the event a `result_unwritable` dead
    letter here, before any produce: Kafka would refuse it again on every restart."""
    if not isinstance(outcome, Processed):
        return _fitting(dead_letter_record(outcome, topics.dlq, topics.inbound), max_bytes)
    try:
        record = processed_record(
            outcome, topics.processed, unwritable=partial(unwritable_record, outcome, topics)
        )
    except (TypeError, ValueError, RecursionError) as exc:
        detail = str(exc).split("\n", 1)[0][:120]  # the encoder's words, never the value
        reason = f"handler result is not JSON: {type(exc).__name__}: {detail}"
        return _fitting(unwritable_record(outcome, topics, reason), max_bytes)
    if size := _oversize(record, max_bytes):
        reason = f"processed record of {size} bytes is over KAFKA_MAX_MESSAGE_BYTES ({max_bytes})"
        return _fitting(unwritable_record(outcome, topics, reason), max_bytes)
    return record


def _oversize(record: KafkaRecord, max_bytes: int) -> int:
    """The record's size if it is over `max_bytes`, else 0. Only a value of half the limit or
    more is counted whole (the hot path): key and headers are small, and should they not be,
    Kafka refuses the record and the sink dead-letters it all the same."""
    if len(record.value) < max_bytes // 2:
        return 0
    size = record.size()
    return size if size > max_bytes else 0


def _fitting(letter: KafkaRecord, max_bytes: int) -> KafkaRecord:
    if size := _oversize(letter, max_bytes):
        reason = f"dead letter of {size} bytes is over KAFKA_MAX_MESSAGE_BYTES ({max_bytes})"
        return without_envelope(letter, reason)
    return letter


def processed_record(
    outcome: Processed, topic: str, unwritable: partial[KafkaRecord] | None = None
) -> KafkaRecord:
    event = outcome.event
    kind = event.kind  # a StrEnum: orjson writes its value
    # The event's own time (Meta's timestamp) and its age when handled.
    own = event_time(event)
    handled = outcome.handled_at
    received = event.received_at
    value = {
        "event_key": event.event_key,
        "webhook_id": event.webhook_id,
        "kind": kind,
        "conversation_key": event.conversation_key,
        "event": event.for_handler(),
        "result": outcome.result,
        "attempts": outcome.attempts,
        "retries": outcome.retries,
        # orjson writes a UTC datetime as isoformat() does, in a tenth of its time.
        "handled_at": handled if handled.tzinfo is UTC else handled.isoformat(),
        "handler_latency_ms": round(outcome.handler_latency_s * 1000, 3),
        # Unix seconds as Meta sends them: formatting a date cost the hot path microseconds.
        "event_time": (int(own) if own.is_integer() else own) if own is not None else None,
        "event_age_s": round(handled.timestamp() - own, 3) if own is not None else None,
        "stale": event.stale,
        # A status's place in its message's order (core/status_order.py); null otherwise.
        "current_status": event.current_status,
        "superseded": event.superseded,
        "skipped": outcome.skipped,
    }
    headers = processed_headers(
        event.event_key,
        event.webhook_id,
        kind,
        outcome.attempts,
        None if received is None else round((handled - received).total_seconds() * 1000),
    )
    if event.traceparent is not None:
        headers += trace_headers(event.traceparent, event.tracestate)
    return KafkaRecord(
        topic,
        event.conversation_key.encode(),
        _processed_value(value),
        headers,
        (event.event_key, "processed"),
        received,
        None,
        kind,
        unwritable,
    )


def _processed_value(value: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(value, default=str)
    except TypeError:  # what orjson refuses (jsonbytes): the stdlib writes no datetime
        if isinstance(handled := value["handled_at"], datetime):
            value["handled_at"] = handled.isoformat()
        return jsonbytes.dumps(value)


def unwritable_record(outcome: Processed, topics: Topics, reason: str) -> KafkaRecord:
    """The dead letter of an event whose processed record cannot be written."""
    event = outcome.event
    letter = DeadLetter(
        error_class=ErrorClass.RESULT_UNWRITABLE,
        reason=reason,
        webhook_id=event.webhook_id,
        event_key=event.event_key,
        conversation_key=event.conversation_key,
        attempts=outcome.attempts,
        first_failure_at=outcome.handled_at,
        last_failure_at=outcome.handled_at,
        source=event.source,
        event=event,
    )
    return dead_letter_record(letter, topics.dlq, topics.inbound)


def without_envelope(record: KafkaRecord, reason: str) -> KafkaRecord:
    """A dead letter Kafka refused, as its headers alone: the source topic, partition and offset
    still lead to the original (while the inbound topic keeps it)."""
    headers = [*record.headers, *dropped(reason)]
    return replace(record, value=b"", headers=headers)


def dead_letter_record(letter: DeadLetter, topic: str, inbound_topic: str) -> KafkaRecord:
    """The original envelope, with the error context as headers (after Kafka Connect's DLQ)."""
    source = letter.source
    headers = DeadLetterHeaders(
        error_class=letter.error_class.value,
        error_reason=letter.reason,
        webhook_id=letter.webhook_id,
        event_key=letter.event_key,
        attempts=letter.attempts,
        first_failure_at=letter.first_failure_at,
        last_failure_at=letter.last_failure_at,
        source_topic=source.topic if source else inbound_topic,
        source_partition=source.partition if source else None,
        source_offset=source.offset if source else None,
        status_code=letter.status_code,
        envelope_rebuilt=letter.is_rebuilt(),
    ).to_headers()
    if letter.event is not None and letter.event.traceparent is not None:
        headers += trace_headers(letter.event.traceparent, letter.event.tracestate)
    key = letter.event_key or letter.webhook_id
    return KafkaRecord(
        topic=topic,
        key=key.encode() if key else None,
        value=letter.envelope_bytes(),
        headers=headers,
        done=(letter.event_key, "dlq") if letter.event_key else None,
        received_at=letter.event.received_at if letter.event else None,
        error_class=letter.error_class.value,
    )
