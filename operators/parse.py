"""Parse an inbound Kafka record into WhatsApp events, or a dead letter saying why not.

No I/O. Whatever the bytes, `parse_record` returns a list; it never raises.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeGuard, TypeVar

from bytewax.connectors.kafka import KafkaSourceMessage
from pydantic import BaseModel, ValidationError

from wa_worker.core import metrics
from wa_worker.errors import InputError, SignatureError
from wa_worker.models.records import (
    ENVELOPE_CARRY_LIMIT,
    DeadLetter,
    Envelope,
    ErrorClass,
    EventKind,
    SourcePosition,
    WebhookEvent,
)
from wa_worker.models.webhook import Entry, Value, WebhookPayload

WHATSAPP_OBJECT = "whatsapp_business_account"
SIGNATURE_HEADER = "X-Hub-Signature-256"
M = TypeVar("M", bound=BaseModel)


def parse_record(
    raw: bytes | None, source: SourcePosition | None, app_secret: bytes | None = None
) -> list[WebhookEvent | DeadLetter]:
    """Split one inbound record into events; anything unusable becomes one DeadLetter."""
    webhook_id: str | None = None
    try:
        envelope = _load_envelope(raw)
        webhook_id = envelope.id
        payload = _load_payload(envelope, app_secret)
        carried = raw if raw is not None and len(raw) <= ENVELOPE_CARRY_LIMIT else None
        events = list(_split(envelope, payload, source, carried))
        if not events:
            raise InputError("webhook has no changes", ErrorClass.INVALID_PAYLOAD)
        return list(events)
    except InputError as exc:
        error_class = ErrorClass(exc.reason)
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001  (no input may crash the dataflow)
        error_class = ErrorClass.INVALID_PAYLOAD
        reason = f"unparseable input: {type(exc).__name__}: {exc}"[:500]
    return [
        DeadLetter(
            error_class=error_class,
            reason=reason,
            webhook_id=webhook_id,
            source=source,
            original=raw if raw is not None else b"",
        )
    ]


def verify_signature(body: bytes, header: str | None, app_secret: bytes) -> None:
    """Meta signs the raw body with the app secret: `sha256=<hex hmac>`."""
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    scheme, _, given = header.partition("=")
    if scheme != "sha256" or not given:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header")
    expected = hmac.new(app_secret, body, hashlib.sha256).hexdigest().encode()
    # Compared as bytes: compare_digest refuses non-ASCII strings, and a forged header may hold any.
    if not hmac.compare_digest(expected, given.strip().lower().encode(errors="replace")):
        raise SignatureError(f"{SIGNATURE_HEADER} does not match the body")


# Meta's payloads are a handful of levels deep. Much deeper JSON parses, but an event holding
# it could not be pickled into a recovery snapshot (recursion limit) and would stop the worker
# at every restart: it is dead-lettered here instead.
MAX_JSON_DEPTH = 64


def _check_depth(text: bytes | str, data: Any) -> None:
    opened = (
        text.count(b"{") + text.count(b"[")
        if isinstance(text, bytes)
        else (text.count("{") + text.count("["))
    )
    if opened <= MAX_JSON_DEPTH:  # cheap common case: too few brackets to be that deep
        return
    level: list[tuple[Any, int]] = [(data, 1)]
    while level:
        value, depth = level.pop()
        if depth > MAX_JSON_DEPTH:
            raise InputError(
                f"JSON nested deeper than {MAX_JSON_DEPTH} levels", ErrorClass.INVALID_PAYLOAD
            )
        if isinstance(value, dict):
            level.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            level.extend((v, depth + 1) for v in value)


def _load_envelope(raw: bytes | None) -> Envelope:
    if not raw:
        raise InputError("empty record", ErrorClass.INVALID_ENVELOPE)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"envelope is not JSON: {exc}"[:300], ErrorClass.INVALID_JSON) from exc
    _check_depth(raw, data)
    try:
        return Envelope.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"invalid envelope: {_summary(exc)}", ErrorClass.INVALID_ENVELOPE) from exc


def _load_payload(envelope: Envelope, app_secret: bytes | None) -> WebhookPayload:
    body: Any = envelope.body
    if isinstance(body, str):
        if app_secret is not None:
            # surrogatepass: a body Meta cannot have signed still gets a signature verdict.
            raw = body.encode("utf-8", "surrogatepass")
            verify_signature(raw, envelope.header(SIGNATURE_HEADER), app_secret)
        text = body
        try:
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"body is not JSON: {exc}"[:300], ErrorClass.INVALID_JSON) from exc
        _check_depth(text, body)
    payload = _validated(WebhookPayload, body, "not a WhatsApp payload")
    if payload.object != WHATSAPP_OBJECT:
        raise InputError(
            f"not a WhatsApp payload: object is {payload.object[:80]!r}", ErrorClass.INVALID_PAYLOAD
        )
    return payload


def _split(
    envelope: Envelope,
    payload: WebhookPayload,
    source: SourcePosition | None,
    carried: bytes | None,
) -> Iterator[WebhookEvent]:
    common: dict[str, Any] = {
        "webhook_id": envelope.id,
        "object": payload.object,
        "envelope_headers": envelope.headers,
        "received_at": envelope.timestamp,
        "source": source,
        "envelope_raw": carried,
    }
    for entry in payload.entry:
        for change in entry.changes:
            if change.field == "messages":
                yield from _split_messages_value(entry, change.value, common)
            else:
                yield _change_event(entry, change.field, change.value, common)


def _split_messages_value(
    entry: Entry, raw_value: dict[str, Any], common: dict[str, Any]
) -> Iterator[WebhookEvent]:
    value = _validated(Value, raw_value, "invalid messages value")
    phone_number_id = value.metadata.phone_number_id if value.metadata else None
    business = phone_number_id or "-"  # Meta always sends metadata; never key on "None"
    # Events carry the dicts as received: validation checks types, it does not rewrite values.
    context = {k: v for k, v in raw_value.items() if k not in ("messages", "statuses", "errors")}
    base = {
        **common,
        "field": "messages",
        "entry_id": entry.id,
        "entry_time": entry.time,
        "phone_number_id": phone_number_id,
        "value_context": context,
    }
    contacts = value.contacts or []
    for message, raw_message in zip(
        value.messages or [], raw_value.get("messages") or [], strict=True
    ):
        contact = contacts[0] if contacts else None
        customer = (
            message.from_
            or message.from_user_id
            or (contact.wa_id or contact.user_id if contact else None)
        )
        yield WebhookEvent(
            event_key=message.id,
            conversation_key=f"{business}:{customer or '-'}",
            kind=EventKind.MESSAGE,
            wa_id=customer,
            payload=raw_message,
            **base,
        )
    for status, raw_status in zip(
        value.statuses or [], raw_value.get("statuses") or [], strict=True
    ):
        customer = status.recipient_id or status.recipient_user_id
        yield WebhookEvent(
            event_key=f"{status.id}:{status.status}",
            conversation_key=f"{business}:{customer or '-'}",
            kind=EventKind.STATUS,
            wa_id=customer,
            payload=raw_status,
            **base,
        )
    for raw_error in raw_value.get("errors") or []:
        yield WebhookEvent(
            event_key="error:" + content_hash(phone_number_id, raw_error),
            conversation_key=f"{business}:-",
            kind=EventKind.ERROR,
            payload=raw_error,
            **base,
        )
    if not (value.messages or value.statuses or value.errors):
        # A messages change with nothing we split on is still passed on, never dropped.
        yield _change_event(entry, "messages", raw_value, common)


def _change_event(
    entry: Entry, field: str, value: dict[str, Any], common: dict[str, Any]
) -> WebhookEvent:
    return WebhookEvent(
        event_key=f"change:{field}:" + content_hash(entry.id, entry.time, field, value),
        conversation_key=f"{entry.id}:{field}",
        kind=EventKind.CHANGE,
        field=field,
        entry_id=entry.id,
        entry_time=entry.time,
        payload=value,
        **common,
    )


def _validated(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{what}: {_summary(exc)}", ErrorClass.INVALID_PAYLOAD) from exc


def content_hash(*parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _summary(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for error in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in error["loc"]) or "(root)"
        parts.append(f"{loc}: {error['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def parse_batch(
    app_secret: bytes | None,
) -> Callable[
    [list[KafkaSourceMessage[bytes | None, bytes | None]]], list[WebhookEvent | DeadLetter]
]:
    """The `flat_map_batch` step: every inbound record of a batch, parsed."""

    def parse(
        batch: list[KafkaSourceMessage[bytes | None, bytes | None]],
    ) -> list[WebhookEvent | DeadLetter]:
        out: list[WebhookEvent | DeadLetter] = []
        for msg in batch:
            parsed = parse_record(
                msg.value,
                SourcePosition(
                    topic=msg.topic or "", partition=msg.partition or 0, offset=msg.offset or 0
                ),
                app_secret,
            )
            for item in parsed:
                if isinstance(item, WebhookEvent):
                    metrics.EVENTS_SPLIT.labels(item.kind.value).inc()
                else:
                    metrics.PARSE_ERRORS.inc()
            out.extend(parsed)
        return out

    return parse


def is_event(item: WebhookEvent | DeadLetter) -> TypeGuard[WebhookEvent]:
    return isinstance(item, WebhookEvent)
