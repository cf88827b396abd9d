"""The records that flow through the dataflow: envelopes in, events inside, outcomes out."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Self, TypeVar

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
        return in_utc_zone(value)

    def header(self, name: str) -> str | None:
        return header_of(self.headers, name)


_ZERO = timedelta(0)
_M = TypeVar("_M", bound=BaseModel)


def unchecked(cls: type[_M], values: dict[str, Any], names: set[str]) -> _M:
    """A model of `cls` holding `values` (every field, in declaration order) and `names` as
    its fields set, its slots set as pydantic sets them when it builds one, without checks:
    for values the worker validated or made itself, on the hot path."""
    model = object.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", names)
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


def in_utc_zone(value: datetime | None) -> datetime | None:
    """A naive time as UTC, and a UTC one with `datetime.UTC` as its zone rather than pydantic's
    equal one: each timestamp() or subtraction of an event's time (reorder window, records,
    latency) then reads the offset in C (calling pydantic's zone took ~2 % of the dataflow
    thread). Other offsets are kept."""
    if value is not None and (value.tzinfo is None or value.utcoffset() == _ZERO):
        return value.replace(tzinfo=UTC)
    return value


def header_of(headers: dict[str, Any], name: str) -> str | None:
    """Case-insensitive header lookup; Node gives lists for repeated headers."""
    wanted = name.lower()
    for key, value in headers.items():
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
    # One item of another field's list (operators/fields.py; the README has the table).
    ECHO = "echo"  # smb_message_echoes: a message the business sent from the Business app
    CALL = "call"  # calls: a call event (connect, terminate) or a call status
    USER_PREFERENCE = "user_preference"  # user_preferences: marketing opt-out / resume
    HISTORY = "history"  # history: one message of the coexistence history sync
    STATE_SYNC = "state_sync"  # smb_app_state_sync: a contact added or removed in the app
    GROUP = "group"  # group_*: one update of a group


# Each per-item kind's list in its field's value, for rebuilding a one-event envelope.
ITEM_LISTS = {
    EventKind.MESSAGE: "messages",
    EventKind.STATUS: "statuses",
    EventKind.ERROR: "errors",
    EventKind.ECHO: "message_echoes",
    EventKind.CALL: "calls",
    EventKind.USER_PREFERENCE: "user_preferences",
    EventKind.STATE_SYNC: "state_sync",
    EventKind.GROUP: "groups",
}


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
    wa_id: str | None = None  # the customer's phone number, when the payload has one
    user_id: str | None = None  # the customer's business-scoped user id (BSUID), when given
    payload: dict[str, Any]
    value_context: dict[str, Any] = Field(default_factory=dict)
    envelope_headers: dict[str, Any] = Field(default_factory=dict)
    received_at: datetime | None = None
    source: SourcePosition | None = None
    envelope_raw: bytes | None = None
    # Fields the worker rewrote, as paths in the handler's JSON: `payload.timestamp` (a number
    # where Meta sends digits), `received_at` (the envelope's was unusable: receive time).
    coerced: tuple[str, ...] = ()
    # `standby`: another app owns the conversation; the handler must only observe it.
    observe_only: bool = False
    # Older than MAX_EVENT_AGE_S when first read (operators/deadlines.py).
    stale: bool = False
    # A `user_changed_number` / `user_changed_user_id` system message: the customer's
    # identifiers before and after (`previous_wa_id`, `wa_id`, `previous_user_id`, `user_id`).
    identity_change: dict[str, str | None] | None = None
    # A status: its message's highest status after this one, and whether a higher one was
    # seen before it (core/status_order.py); set when the status is claimed.
    current_status: str | None = None
    superseded: bool = False
    # W3C trace context (wa_worker/core/tracing.py): the inbound record's until the event span
    # starts, then that span's. Strings, so they pickle into recovery snapshots.
    traceparent: str | None = None
    tracestate: str | None = None

    def __setstate__(self, state: dict[Any, Any]) -> None:
        # Events pickled into recovery snapshots before these fields existed lack them.
        fields = state.get("__dict__", {})
        for name, default in _ADDED_FIELDS:
            fields.setdefault(name, default)
        super().__setstate__(state)

    @classmethod
    def parsed(cls, **fields: Any) -> Self:
        """An event from values parse.py has validated already (ids and keys are strings, the
        payload a dict as received): built without pydantic's checks and copies, for about
        half the cost of `WebhookEvent(...)` (`model_construct` costs more than either, for
        its loop over every field). Omitted fields take their defaults;
        tests/test_parse_fast_path.py keeps it equal to the validated constructor. Elsewhere,
        build events the usual way."""
        values = _TEMPLATE.copy()  # every field, in order, so __dict__ matches __init__'s
        values.update(fields)
        for name, factory in _FACTORIES:
            if name not in fields:
                values[name] = factory()
        return unchecked(cls, values, set(fields))

    def changed(self, **update: Any) -> Self:
        """`model_copy(update=...)` without its generic copy protocol (40 % less, on every
        status): the values are the worker's own, not validated, as with model_copy."""
        values = self.__dict__.copy()
        values.update(update)
        names = self.__pydantic_fields_set__.copy()
        names.update(update)
        return unchecked(type(self), values, names)

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
            "user_id": self.user_id,
            "payload": self.payload,
            "value_context": self.value_context,
            "received_at": to_jsonable_python(self.received_at),
            "coerced": list(self.coerced),
            "observe_only": self.observe_only,
            "stale": self.stale,
            "identity_change": self.identity_change,
            "current_status": self.current_status,
            "superseded": self.superseded,
        }

    def single_event_envelope(self) -> dict[str, Any]:
        """An envelope carrying just this event, for the DLQ when the original was too big."""
        value = _rebuilt_value(
            self.kind, copy.deepcopy(self.value_context), copy.deepcopy(self.payload)
        )
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


def _rebuilt_value(kind: EventKind, value: dict[str, Any], payload: dict[str, Any]) -> Any:
    """The change's value holding just this event's item (the value itself for a change)."""
    if kind is EventKind.HISTORY:
        if "history_thread" in value:  # the message back in its thread, in its history item
            thread = {**value.pop("history_thread"), "messages": [payload]}
            item: dict[str, Any] = {"threads": [thread]}
            if (metadata := value.pop("history_metadata", None)) is not None:
                item["metadata"] = metadata
            value["history"] = [item]
        elif "threads" in payload or "errors" in payload:  # a history item (sync declined)
            value["history"] = [payload]
        else:  # a media follow-up: Meta sends it as a messages list
            value["messages"] = [payload]
        return value
    if kind is EventKind.CALL and "event" not in payload and "status" in payload:
        value["statuses"] = [payload]  # a call status rides in `statuses`
        return value
    if (items := ITEM_LISTS.get(kind)) is not None:
        value[items] = [payload]
        return value
    return payload


# WebhookEvent.parsed: each field's default (None for a required one, which must be given)
# and the fields whose default is made per event.
_TEMPLATE: dict[str, Any] = {
    name: None if info.is_required() or info.default_factory else info.default
    for name, info in WebhookEvent.model_fields.items()
}
_FACTORIES: tuple[tuple[str, Callable[[], Any]], ...] = tuple(
    (name, info.default_factory)  # type: ignore[misc]
    for name, info in WebhookEvent.model_fields.items()
    if info.default_factory is not None
)


class EventMaker:
    """The events of one part of a webhook (a messages value's), which share most of their
    fields: those are merged into a prototype once, and each event copies it and sets its
    own few. Building every event with `WebhookEvent.parsed(**shared, **own)` merged the ~20
    shared fields per event (a tenth of the parse step). Same contract as `parsed`: values
    parse.py has validated; tests/test_parse_fast_path.py keeps the two equal."""

    __slots__ = ("_factories", "_other_names", "_person_names", "_values")

    def __init__(self, shared: dict[str, Any]) -> None:
        values = _TEMPLATE.copy()
        values.update(shared)
        self._values = values
        names = tuple(shared)  # parse.py shares the same few sets of fields: derived once each
        if (layout := _LAYOUTS.get(names)) is None:
            layout = _LAYOUTS[names] = (
                frozenset(names) | _PERSON_FIELDS,
                frozenset(names) | _OTHER_FIELDS,
                # Defaults made per event (a dict of its own), for the fields not shared.
                tuple((n, f) for n, f in _FACTORIES if n not in shared),
            )
        self._person_names, self._other_names, self._factories = layout

    def person(
        self,
        event_key: str,
        conversation_key: str,
        kind: EventKind,
        wa_id: str | None,
        user_id: str | None,
        payload: dict[str, Any],
    ) -> WebhookEvent:
        """A message or status: an event with a customer."""
        values = self._values.copy()
        values["event_key"] = event_key
        values["conversation_key"] = conversation_key
        values["kind"] = kind
        values["wa_id"] = wa_id
        values["user_id"] = user_id
        values["payload"] = payload
        return self._made(values, self._person_names)

    def other(
        self, event_key: str, conversation_key: str, kind: EventKind, payload: dict[str, Any]
    ) -> WebhookEvent:
        """An event without a customer of its own (a value's error)."""
        values = self._values.copy()
        values["event_key"] = event_key
        values["conversation_key"] = conversation_key
        values["kind"] = kind
        values["payload"] = payload
        return self._made(values, self._other_names)

    def _made(self, values: dict[str, Any], names: frozenset[str]) -> WebhookEvent:
        for name, factory in self._factories:
            values[name] = factory()
        return unchecked(WebhookEvent, values, set(names))


_OTHER_FIELDS = frozenset({"event_key", "conversation_key", "kind", "payload"})
_LAYOUTS: dict[
    tuple[str, ...],
    tuple[frozenset[str], frozenset[str], tuple[tuple[str, Callable[[], Any]], ...]],
] = {}
_PERSON_FIELDS = _OTHER_FIELDS | {"wa_id", "user_id"}

_ADDED_FIELDS: tuple[tuple[str, Any], ...] = (
    ("coerced", ()),
    ("user_id", None),
    ("observe_only", False),
    ("stale", False),
    ("identity_change", None),
    ("current_status", None),
    ("superseded", False),
    ("traceparent", None),
    ("tracestate", None),
)


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
    DEADLINE_EXCEEDED = "deadline_exceeded"  # a retry would come past the event's deadline


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
    skipped: str | None = None  # why the handler was not called (`stale`, `superseded`)

    @property
    def retries(self) -> int:
        return max(self.attempts - 1, 0)  # a skipped event had no call

    @classmethod
    def handled(
        cls,
        event: WebhookEvent,
        result: Any,
        attempts: int,
        handled_at: datetime,
        handler_latency_s: float,
    ) -> Self:
        """The outcome of a handler call, built without pydantic's checks (a third of the
        cost of `Processed(...)`, once per event): the conversation logic's own values, of
        the declared types. tests/test_records.py keeps it equal to the validated one."""
        values = {
            "event": event,
            "result": result,
            "attempts": attempts,
            "handled_at": handled_at,
            "handler_latency_s": handler_latency_s,
            "skipped": None,
        }
        return unchecked(cls, values, set(_HANDLED_FIELDS))


_HANDLED_FIELDS = ("event", "result", "attempts", "handled_at", "handler_latency_s")


Outcome = Processed | DeadLetter
