"""The records that flow through the dataflow: envelopes in, events inside, outcomes out."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import to_jsonable_python

# Envelopes up to this size ride along with each of their events, so a DLQ record can carry
# the untouched bytes; larger ones are rebuilt per event to keep state and snapshots small.
ENVELOPE_CARRY_LIMIT = 64 * 1024


class Envelope(BaseModel):
    """What the webhook edge publishes to the inbound topic."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(min_length=1)
    headers: dict[str, Any] = Field(default_factory=dict)
    body: dict[str, Any] | str
    timestamp: datetime | None = None

    @field_validator("timestamp")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup; Node gives lists for repeated headers."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                if isinstance(value, list):
                    return str(value[0]) if value else None
                return str(value)
        return None


class SourcePosition(BaseModel):
    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int


class EventKind(StrEnum):
    MESSAGE = "message"
    STATUS = "status"
    ERROR = "error"
    CHANGE = "change"  # a non-`messages` field: account_update, template status, quality, ...


class WebhookEvent(BaseModel):
    """One WhatsApp update split out of a webhook, normalized."""

    model_config = ConfigDict(frozen=True)

    event_key: str
    conversation_key: str
    kind: EventKind
    webhook_id: str
    field: str
    object: str
    entry_id: str
    entry_time: int | None = None
    phone_number_id: str | None = None
    wa_id: str | None = None
    payload: dict[str, Any]
    value_context: dict[str, Any] = Field(default_factory=dict)
    envelope_headers: dict[str, Any] = Field(default_factory=dict)
    received_at: datetime | None = None
    source: SourcePosition | None = None
    envelope_raw: bytes | None = None
    # Fields the worker rewrote, as paths in the handler's JSON: `payload.timestamp` (a number
    # where Meta sends digits), `received_at` (the envelope's was unusable: receive time).
    coerced: tuple[str, ...] = ()
    # W3C trace context (wa_worker/core/tracing.py): the inbound record's until the event span
    # starts, then that span's. Strings, so they pickle into recovery snapshots.
    traceparent: str | None = None
    tracestate: str | None = None

    def __setstate__(self, state: dict[Any, Any]) -> None:
        # Events pickled into recovery snapshots before `coerced` existed lack it.
        state.get("__dict__", {}).setdefault("coerced", ())
        state.get("__dict__", {}).setdefault("traceparent", None)
        state.get("__dict__", {}).setdefault("tracestate", None)
        super().__setstate__(state)

    def for_handler(self) -> dict[str, Any]:
        """The JSON the handler receives: the event without transport baggage.

        Built by hand rather than with `model_dump(mode="json")`, which walked every payload
        dict on the hot path (a quarter of the record-building time). The payloads are JSON
        as received, so they go out as they are; a test keeps this equal to model_dump."""
        return {
            "event_key": self.event_key,
            "conversation_key": self.conversation_key,
            "kind": self.kind.value,
            "webhook_id": self.webhook_id,
            "field": self.field,
            "object": self.object,
            "entry_id": self.entry_id,
            "entry_time": self.entry_time,
            "phone_number_id": self.phone_number_id,
            "wa_id": self.wa_id,
            "payload": self.payload,
            "value_context": self.value_context,
            "received_at": to_jsonable_python(self.received_at),
            "coerced": list(self.coerced),
        }

    def single_event_envelope(self) -> dict[str, Any]:
        """An envelope carrying just this event, for the DLQ when the original was too big."""
        value = copy.deepcopy(self.value_context)
        if self.kind is EventKind.MESSAGE:
            value["messages"] = [copy.deepcopy(self.payload)]
        elif self.kind is EventKind.STATUS:
            value["statuses"] = [copy.deepcopy(self.payload)]
        elif self.kind is EventKind.ERROR:
            value["errors"] = [copy.deepcopy(self.payload)]
        else:
            value = copy.deepcopy(self.payload)
        entry: dict[str, Any] = {
            "id": self.entry_id,
            "changes": [{"field": self.field, "value": value}],
        }
        if self.entry_time is not None:
            entry["time"] = self.entry_time  # part of a change event's key
        return {
            "id": self.webhook_id,
            "headers": self.envelope_headers,
            "body": {
                "object": self.object,
                "entry": [entry],
            },
            "timestamp": self.received_at.isoformat() if self.received_at else None,
        }


class ErrorClass(StrEnum):
    """Bounded label set for metrics and the DLQ's `error class`."""

    INVALID_JSON = "invalid_json"
    INVALID_ENVELOPE = "invalid_envelope"
    INVALID_PAYLOAD = "invalid_payload"
    BAD_SIGNATURE = "bad_signature"
    HANDLER_PERMANENT = "handler_permanent"
    RETRIES_EXHAUSTED = "retries_exhausted"
    CONSUMER_ERROR = "consumer_error"
    RESULT_UNWRITABLE = "result_unwritable"  # the handler's result cannot be written to Kafka


class DeadLetter(BaseModel):
    """Why something could not be processed, with everything needed to look at it again."""

    model_config = ConfigDict(frozen=True)

    error_class: ErrorClass
    reason: str
    webhook_id: str | None = None
    event_key: str | None = None
    conversation_key: str | None = None
    attempts: int = 0
    first_failure_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    last_failure_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: SourcePosition | None = None
    status_code: int | None = None
    original: bytes | None = None
    event: WebhookEvent | None = None
    rebuilt: bool = False  # `original` is an envelope rebuilt around the failed part

    def is_rebuilt(self) -> bool:
        """True when the original bytes were too big to carry and the envelope is rebuilt."""
        if self.rebuilt:
            return True
        return self.original is None and self.event is not None and self.event.envelope_raw is None

    def envelope_bytes(self) -> bytes:
        if self.original is not None:
            return self.original
        if self.event is not None:
            if self.event.envelope_raw is not None:
                return self.event.envelope_raw
            return json.dumps(self.event.single_event_envelope()).encode()
        return b""


class Processed(BaseModel):
    """An event the handler accepted."""

    model_config = ConfigDict(frozen=True)

    event: WebhookEvent
    result: Any = None
    attempts: int
    handled_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    handler_latency_s: float = 0.0

    @property
    def retries(self) -> int:
        return self.attempts - 1


Outcome = Processed | DeadLetter
