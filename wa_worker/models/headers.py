"""The worker's Kafka record headers: each name once, and one writer (`to_headers`) and one
reader (`from_headers`) per record kind. Processed records, dead letters and re-driven inbound
records carry them; the sinks write them, the DLQ tools and the logs read them.

Readers are tolerant: headers come back from a topic that other writers (an older worker, an
operator's tool) may have filled. A missing header reads as None, an unknown one is ignored,
bytes that are not UTF-8 are decoded with replacement, a number or time that does not parse
reads as None. Writers emit the same bytes, in the same order, as the worker always has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Self

PREFIX = "wa-"

# Every record the worker writes.
EVENT_KEY = "wa-event-key"
WEBHOOK_ID = "wa-webhook-id"
ATTEMPTS = "wa-attempts"
# Processed records.
EVENT_KIND = "wa-event-kind"
LATENCY_MS = "wa-latency-ms"
# Dead letters.
ERROR_CLASS = "wa-error-class"
ERROR_REASON = "wa-error-reason"
FIRST_FAILURE_AT = "wa-first-failure-at"
LAST_FAILURE_AT = "wa-last-failure-at"
SOURCE_TOPIC = "wa-source-topic"
SOURCE_PARTITION = "wa-source-partition"
SOURCE_OFFSET = "wa-source-offset"
STATUS_CODE = "wa-status-code"
ENVELOPE_REBUILT = "wa-envelope-rebuilt"
ENVELOPE_DROPPED = "wa-envelope-dropped"
# Inbound records `dlq redrive` publishes.
REDRIVE_OF = "wa-redrive-of"
REDRIVE_AT = "wa-redrive-at"
# W3C trace context (README "Traces"): on inbound records from `wa-worker ingress`, and on
# processed records and dead letters when tracing is on (the event span's).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

Headers = list[tuple[str, bytes]]
# What a reader may be given: pairs or a mapping (confluent-kafka returns either, with None
# for a header without value), values as bytes or already decoded.
AnyHeaders = Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None


def normalise(raw: AnyHeaders) -> tuple[tuple[str, bytes], ...]:
    """Headers as (name, bytes) pairs in their order; a header without value has b""."""
    if not raw:
        return ()
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    return tuple((str(k), v.encode() if isinstance(v, str) else (v or b"")) for k, v in pairs)


def decoded(raw: AnyHeaders) -> dict[str, str]:
    """Name to text (the last of a repeated name), for display and files."""
    return {k: v.decode(errors="replace") for k, v in normalise(raw)}


def _int(found: Mapping[str, str], name: str) -> int | None:
    text = found.get(name)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _time(found: Mapping[str, str], name: str) -> datetime | None:
    text = found.get(name)
    try:
        return datetime.fromisoformat(text) if text is not None else None
    except ValueError:
        return None


def _pairs(fields: Iterable[tuple[str, object]]) -> Headers:
    """The present fields as header pairs; None means absent."""
    return [(name, str(value).encode()) for name, value in fields if value is not None]


def attempts_of(raw: AnyHeaders) -> int | None:
    """The handler calls a record's event took (processed record or dead letter)."""
    return _int(decoded(raw), ATTEMPTS)


@dataclass(frozen=True, slots=True)
class ProcessedHeaders:
    """The headers of a record on the processed topic."""

    event_key: str
    webhook_id: str
    event_kind: str
    attempts: int
    latency_ms: int | None = None  # since the webhook was received; None: unknown (written "")

    def to_headers(self) -> Headers:
        return processed_headers(
            self.event_key, self.webhook_id, self.event_kind, self.attempts, self.latency_ms
        )

    @classmethod
    def from_headers(cls, raw: AnyHeaders) -> Self:
        found = decoded(raw)
        return cls(
            event_key=found.get(EVENT_KEY, ""),
            webhook_id=found.get(WEBHOOK_ID, ""),
            event_kind=found.get(EVENT_KIND, ""),
            attempts=_int(found, ATTEMPTS) or 0,
            latency_ms=_int(found, LATENCY_MS),
        )


def processed_headers(
    event_key: str, webhook_id: str, event_kind: str, attempts: int, latency_ms: int | None
) -> Headers:
    """`ProcessedHeaders(...).to_headers()` without building the dataclass (every record)."""
    return [
        (EVENT_KEY, event_key.encode()),
        (WEBHOOK_ID, webhook_id.encode()),
        (EVENT_KIND, event_kind.encode()),
        (ATTEMPTS, str(attempts).encode()),
        (LATENCY_MS, b"" if latency_ms is None else str(latency_ms).encode()),
    ]


# The dead-letter headers worth a log line, by their log field names.
_LOGGED = {
    ERROR_CLASS: "error_class",
    ERROR_REASON: "error_reason",
    WEBHOOK_ID: "webhook_id",
    EVENT_KEY: "event_key",
    ATTEMPTS: "attempts",
    SOURCE_PARTITION: "source_partition",
    SOURCE_OFFSET: "source_offset",
}


@dataclass(frozen=True, slots=True)
class DeadLetterHeaders:
    """The error context of a record on the DLQ (after Kafka Connect's DLQ headers)."""

    error_class: str
    error_reason: str
    webhook_id: str | None = None
    event_key: str | None = None
    attempts: int | None = None
    first_failure_at: datetime | None = None
    last_failure_at: datetime | None = None
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    status_code: int | None = None
    envelope_rebuilt: bool = False  # the envelope was too big to carry: rebuilt per event
    envelope_dropped: str | None = None  # why the record has no value (Kafka refused it)

    def to_headers(self) -> Headers:
        return _pairs(
            (
                (ERROR_CLASS, self.error_class),
                (ERROR_REASON, self.error_reason),
                (WEBHOOK_ID, self.webhook_id),
                (EVENT_KEY, self.event_key),
                (ATTEMPTS, self.attempts),
                (FIRST_FAILURE_AT, _iso(self.first_failure_at)),
                (LAST_FAILURE_AT, _iso(self.last_failure_at)),
                (SOURCE_TOPIC, self.source_topic),
                (SOURCE_PARTITION, self.source_partition),
                (SOURCE_OFFSET, self.source_offset),
                (STATUS_CODE, self.status_code),
                (ENVELOPE_REBUILT, "true" if self.envelope_rebuilt else None),
            )
        ) + dropped(self.envelope_dropped)

    @classmethod
    def from_headers(cls, raw: AnyHeaders) -> Self:
        found = decoded(raw)
        return cls(
            error_class=found.get(ERROR_CLASS, ""),
            error_reason=found.get(ERROR_REASON, ""),
            webhook_id=found.get(WEBHOOK_ID),
            event_key=found.get(EVENT_KEY),
            attempts=_int(found, ATTEMPTS),
            first_failure_at=_time(found, FIRST_FAILURE_AT),
            last_failure_at=_time(found, LAST_FAILURE_AT),
            source_topic=found.get(SOURCE_TOPIC),
            source_partition=_int(found, SOURCE_PARTITION),
            source_offset=_int(found, SOURCE_OFFSET),
            status_code=_int(found, STATUS_CODE),
            envelope_rebuilt=found.get(ENVELOPE_REBUILT) == "true",
            envelope_dropped=found.get(ENVELOPE_DROPPED),
        )

    @staticmethod
    def log_context(raw: AnyHeaders) -> dict[str, str]:
        """The headers worth a log line, as text, by field name (`error_class`, ...), in the
        record's order."""
        return {_LOGGED[k]: v for k, v in decoded(raw).items() if k in _LOGGED}


def dropped(reason: str | None) -> Headers:
    """The header that marks a dead letter written without its envelope (appended last)."""
    return [] if reason is None else [(ENVELOPE_DROPPED, reason.encode())]


def trace_headers(traceparent: str | None, tracestate: str | None = None) -> Headers:
    """The trace context headers (appended last); none when there is no context."""
    if traceparent is None:
        return []
    out = [(TRACEPARENT, traceparent.encode())]
    return [*out, (TRACESTATE, tracestate.encode())] if tracestate else out


def trace_of(raw: AnyHeaders) -> tuple[str | None, str | None]:
    """(traceparent, tracestate) of a record, names matched case-insensitively."""
    parent = state = None
    for name, value in normalise(raw):
        lowered = name.lower()
        if lowered == TRACEPARENT:
            parent = value.decode(errors="replace")
        elif lowered == TRACESTATE:
            state = value.decode(errors="replace")
    return parent, state


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


@dataclass(frozen=True, slots=True)
class RedriveHeaders:
    """Where a re-driven inbound record comes from: `topic/partition/offset`, and when."""

    of: str
    at: str

    def to_headers(self) -> Headers:
        return [(REDRIVE_OF, self.of.encode()), (REDRIVE_AT, self.at.encode())]

    @classmethod
    def from_headers(cls, raw: AnyHeaders) -> Self | None:
        """None when the record is no re-drive."""
        found = decoded(raw)
        of = found.get(REDRIVE_OF)
        return None if of is None else cls(of, found.get(REDRIVE_AT, ""))
