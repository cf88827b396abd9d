"""Turn outcomes into Kafka records for the processed topic and the DLQ. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from wa_worker import jsonbytes
from wa_worker.models.records import DeadLetter, Outcome, Processed


@dataclass(frozen=True, slots=True)
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

    def log_context(self) -> dict[str, str]:
        """The DLQ headers worth a log line (names without the `wa-` prefix)."""
        wanted = {
            "wa-error-class",
            "wa-error-reason",
            "wa-webhook-id",
            "wa-event-key",
            "wa-attempts",
            "wa-source-partition",
            "wa-source-offset",
        }
        return {
            k[3:].replace("-", "_"): v.decode(errors="replace")
            for k, v in self.headers
            if k in wanted
        }


@dataclass(frozen=True)
class Topics:
    processed: str
    dlq: str
    inbound: str


def to_record(outcome: Outcome, topics: Topics) -> KafkaRecord:
    if isinstance(outcome, Processed):
        return processed_record(outcome, topics.processed)
    return dead_letter_record(outcome, topics.dlq, topics.inbound)


def processed_record(outcome: Processed, topic: str) -> KafkaRecord:
    event = outcome.event
    value = {
        "event_key": event.event_key,
        "webhook_id": event.webhook_id,
        "kind": event.kind.value,
        "conversation_key": event.conversation_key,
        "event": event.for_handler(),
        "result": outcome.result,
        "attempts": outcome.attempts,
        "retries": outcome.retries,
        "handled_at": outcome.handled_at.isoformat(),
        "handler_latency_ms": round(outcome.handler_latency_s * 1000, 3),
    }
    headers = [
        ("wa-event-key", event.event_key.encode()),
        ("wa-webhook-id", event.webhook_id.encode()),
        ("wa-event-kind", event.kind.value.encode()),
        ("wa-attempts", str(outcome.attempts).encode()),
        ("wa-latency-ms", _latency_ms(event.received_at, outcome.handled_at).encode()),
    ]
    return KafkaRecord(
        topic=topic,
        key=event.conversation_key.encode(),
        value=jsonbytes.dumps(value),
        headers=headers,
        done=(event.event_key, "processed"),
        received_at=event.received_at,
        kind=event.kind.value,
    )


def dead_letter_record(letter: DeadLetter, topic: str, inbound_topic: str) -> KafkaRecord:
    """The original envelope, with the error context as headers (after Kafka Connect's DLQ)."""
    source = letter.source
    context: dict[str, str | int | None] = {
        "wa-error-class": letter.error_class.value,
        "wa-error-reason": letter.reason,
        "wa-webhook-id": letter.webhook_id,
        "wa-event-key": letter.event_key,
        "wa-attempts": letter.attempts,
        "wa-first-failure-at": letter.first_failure_at.isoformat(),
        "wa-last-failure-at": letter.last_failure_at.isoformat(),
        "wa-source-topic": source.topic if source else inbound_topic,
        "wa-source-partition": source.partition if source else None,
        "wa-source-offset": source.offset if source else None,
        "wa-status-code": letter.status_code,
        "wa-envelope-rebuilt": "true" if letter.is_rebuilt() else None,
    }
    headers = [(k, str(v).encode()) for k, v in context.items() if v is not None]
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


def _latency_ms(received_at: datetime | None, now: datetime) -> str:
    if received_at is None:
        return ""
    return str(round((now - received_at).total_seconds() * 1000))
