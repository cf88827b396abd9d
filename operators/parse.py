"""Parse an inbound Kafka record into WhatsApp events, and dead letters saying why not for
whatever part of it is unusable (operators/salvage.py finds which).

No I/O. Whatever the bytes, `parse_record` returns a list; it never raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeGuard

import msgspec
from pydantic import TypeAdapter, ValidationError

from wa_worker.core import metrics
from wa_worker.core.timespec import from_ms
from wa_worker.errors import InputError, SignatureError
from wa_worker.models import webhook_structs as fast
from wa_worker.models.records import (
    ENVELOPE_CARRY_LIMIT,
    DeadLetter,
    Envelope,
    ErrorClass,
    EventKind,
    EventMaker,
    SourcePosition,
    WebhookEvent,
    header_of,
    in_utc_zone,
)
from wa_worker.models.webhook import Contact, Message, Status, Value, WebhookPayload
from wa_worker.operators.fields import AnyEntry, flag, split_field
from wa_worker.operators.fields import content_hash as content_hash
from wa_worker.operators.identity import conversation_key, identity_change
from wa_worker.operators.inbound import InboundMessage
from wa_worker.operators.salvage import BadPart, salvage_entries, salvage_value, summary

WHATSAPP_OBJECT = "whatsapp_business_account"
SIGNATURE_HEADER = "X-Hub-Signature-256"


def parse_record(
    raw: bytes | None,
    source: SourcePosition | None,
    app_secret: AppSecret | None = None,
    received_ms: int | None = None,
) -> list[WebhookEvent | DeadLetter]:
    """Split one inbound record into events. A part that fails validation (an entry, a change,
    a messages value, a message, a status) is a DeadLetter of its own among them; a record with
    nothing usable is one DeadLetter. `received_ms`: the record's Kafka time, which stands in
    for an unusable envelope timestamp (else the current time)."""
    webhook_id: str | None = None
    try:
        envelope, received_at, coerced, quick = _load_envelope(raw, received_ms)
        webhook_id = envelope.id
        entries, quick = _load_entries(envelope.body, envelope.headers, app_secret, quick)
        common: dict[str, Any] = {  # what every event of the record shares
            "webhook_id": envelope.id,
            "object": WHATSAPP_OBJECT,
            "envelope_headers": envelope.headers,
            "received_at": received_at,
            "source": source,
            "envelope_raw": raw if raw is not None and len(raw) <= ENVELOPE_CARRY_LIMIT else None,
        }
        out = list(_split(entries, common, coerced, quick))
        if not out:
            raise InputError("webhook has no changes", ErrorClass.INVALID_PAYLOAD)
        return out
    except InputError as exc:
        error_class = exc.reason
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


def _part_letter(
    bad: BadPart, entry: Any, common: dict[str, Any], event_key: str | None = None
) -> DeadLetter:
    """A dead letter for one bad part of a record, carrying the record's bytes or, for a large
    record (bytes not carried), an envelope rebuilt around `entry`, the entry holding the part."""
    carried: bytes | None = common["envelope_raw"]
    return DeadLetter(
        error_class=ErrorClass.INVALID_PAYLOAD,
        reason=f"invalid {bad.what}: {bad.reason}"[:500],
        webhook_id=common["webhook_id"],
        event_key=event_key,
        source=common["source"],
        original=carried if carried is not None else _rebuilt_envelope(entry, common),
        rebuilt=carried is None,
    )


def _rebuilt_envelope(entry: Any, common: dict[str, Any]) -> bytes:
    received_at: datetime | None = common["received_at"]
    envelope = {
        "id": common["webhook_id"],
        "headers": common["envelope_headers"],
        "body": {"object": WHATSAPP_OBJECT, "entry": [entry]},
        "timestamp": received_at.isoformat() if received_at else None,
    }
    return json.dumps(envelope).encode()


# One app secret, or several (WA_APP_SECRETS: several apps, or a rotation): any may sign.
AppSecret = bytes | tuple[bytes, ...]


def verify_signature(body: bytes, header: str | None, app_secret: AppSecret) -> None:
    """Meta signs the raw body with the app secret: `sha256=<hex hmac>`."""
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    scheme, _, given = header.partition("=")
    if scheme != "sha256" or not given:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header")
    # Compared as bytes: compare_digest refuses non-ASCII strings, and a forged header may hold any.
    signature = given.strip().lower().encode(errors="replace")
    for secret in (app_secret,) if isinstance(app_secret, bytes) else app_secret:
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
        if hmac.compare_digest(expected, signature):
            return
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


def _decode(text: bytes | str) -> tuple[Any, bool]:
    """JSON as `json.loads` reads it, by msgspec (a sixth of the cost), and whether msgspec
    read it. What msgspec refuses (NaN, a BOM, lone surrogates, UTF-16, integers past 4,300
    digits or floats out of range, bad JSON) `json.loads` reads instead: it accepts the same
    values, or raises its own error, which dead letters quote. JSON only `json.loads` reads
    skips the msgspec checks too (`quick` below): pydantic refuses a lone surrogate in a string
    field, msgspec does not."""
    try:
        return msgspec.json.decode(text), True
    except (ValueError, RecursionError):  # msgspec's errors are ValueErrors
        return json.loads(text), False


def _quick_check(quick: bool, data: Any, kind: type[fast.T]) -> fast.T | None:
    """`data` checked by msgspec when it may be (valid and msgspec-decoded), else None: the
    pydantic models decide, and their errors say why."""
    return fast.checked(data, kind) if quick else None


# The envelope timestamp as records.Envelope reads it (pydantic's many datetime formats).
_TIMESTAMP: TypeAdapter[datetime | None] = TypeAdapter(datetime | None)


# An ISO 8601 time in UTC (or with no offset: read as UTC), in the form the edge writes: read
# by `datetime.fromisoformat` in a tenth of pydantic's time, to the same value (tests/
# test_parse.py), with `datetime.UTC` already its zone. Any other form goes to pydantic.
_PLAIN_UTC_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-]00:00)?"
)


def _envelope_time(value: Any) -> datetime | None:
    """The envelope timestamp as `Envelope` reads it; raises ValidationError as it does."""
    if type(value) is str and _PLAIN_UTC_TIME.fullmatch(value):
        with contextlib.suppress(ValueError):  # a day or hour out of range: pydantic says so
            stamp = datetime.fromisoformat(value)
            return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
    return in_utc_zone(_TIMESTAMP.validate_python(value))


def _fast_envelope(data: Any, quick: bool) -> tuple[fast.Envelope, datetime | None] | None:
    """The envelope when it is plainly valid, checked by msgspec; None sends it to pydantic."""
    if (envelope := _quick_check(quick, data, fast.Envelope)) is None:
        return None
    try:
        return envelope, _envelope_time(data.get("timestamp"))
    except ValidationError:
        return None


def _load_envelope(
    raw: bytes | None, received_ms: int | None
) -> tuple[Envelope | fast.Envelope, datetime | None, tuple[str, ...], bool]:
    """The envelope, its time, what was coerced, and whether msgspec may check the rest."""
    if not raw:
        raise InputError("empty record", ErrorClass.INVALID_ENVELOPE)
    try:
        data, quick = _decode(raw)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"envelope is not JSON: {exc}"[:300], ErrorClass.INVALID_JSON) from exc
    _check_depth(raw, data)
    if (checked := _fast_envelope(data, quick)) is not None:
        return checked[0], checked[1], (), quick
    try:
        envelope = Envelope.model_validate(data)
        return envelope, envelope.timestamp, (), quick
    except ValidationError as exc:
        if not isinstance(data, dict) or any(e["loc"][:1] != ("timestamp",) for e in exc.errors()):
            raise InputError(
                f"invalid envelope: {_summary(exc)}", ErrorClass.INVALID_ENVELOPE
            ) from exc
    # The timestamp only dates the webhook: the receive time stands in for it, and the events
    # say so, rather than the webhook being lost to a dead letter no re-drive can mend.
    envelope = Envelope.model_validate({k: v for k, v in data.items() if k != "timestamp"})
    return envelope, from_ms(received_ms) or datetime.now(UTC), ("received_at",), quick


def _load_entries(
    body: Any, headers: dict[str, Any], app_secret: AppSecret | None, quick: bool
) -> tuple[Sequence[AnyEntry | BadPart], bool]:
    if isinstance(body, str):
        if app_secret is not None:
            # surrogatepass: a body Meta cannot have signed still gets a signature verdict.
            raw = body.encode("utf-8", "surrogatepass")
            verify_signature(raw, header_of(headers, SIGNATURE_HEADER), app_secret)
        text = body
        try:
            body, quick = _decode(text)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"body is not JSON: {exc}"[:300], ErrorClass.INVALID_JSON) from exc
        _check_depth(text, body)
    entries: Sequence[AnyEntry | BadPart]
    if isinstance(body, fast.WebhookPayload):  # checked with its envelope
        kind, entries = body.object, body.entry
    elif (checked := _quick_check(quick, body, fast.WebhookPayload)) is not None:
        kind, entries = checked.object, checked.entry
    else:  # invalid, or valid only as pydantic reads it (a time of "3"): pydantic decides
        try:
            payload = WebhookPayload.model_validate(body)
            kind, entries = payload.object, payload.entry
        except ValidationError as exc:
            entries = salvage_entries(body, exc)  # raises when the payload itself is unusable
            kind = body["object"]
    if kind != WHATSAPP_OBJECT:
        raise InputError(
            f"not a WhatsApp payload: object is {kind[:80]!r}", ErrorClass.INVALID_PAYLOAD
        )
    return entries, quick


def _split(
    entries: Sequence[AnyEntry | BadPart],
    common: dict[str, Any],
    coerced: tuple[str, ...],
    quick: bool,
) -> Iterator[WebhookEvent | DeadLetter]:
    """`coerced`: what the envelope had coerced, shared by every event; `quick`: msgspec may
    check the values."""
    for entry in entries:
        if isinstance(entry, BadPart):
            yield _part_letter(entry, entry.container, common)
            continue
        for change in entry.changes:
            field = change.field
            if field == "messages":
                yield from _split_messages_value(entry, change.value, common, coerced, quick)
            elif field == "standby":
                # Messages and statuses of a conversation another app owns: same shape.
                yield from _split_messages_value(entry, change.value, common, coerced, quick, field)
            elif (events := split_field(entry, field, change.value, common)) is not None:
                yield from (_flag(event, coerced) for event in events)
            else:
                yield _flag(_change_event(entry, field, change.value, common), coerced)


def _split_messages_value(
    entry: AnyEntry,
    raw_value: dict[str, Any],
    common: dict[str, Any],
    coerced: tuple[str, ...],
    quick: bool,
    field: str = "messages",
) -> Iterator[WebhookEvent | DeadLetter]:
    """A `messages` value (or a `standby` one: its events are observe-only, and their keys
    are prefixed `standby:` so that they never pass for the same events delivered live)."""
    flags: dict[str, list[tuple[str, ...]]] = {}  # each kept item's own coercions
    bad: list[BadPart] = []
    value: Value | fast.Value | None = _quick_check(quick, raw_value, fast.Value)
    if value is None:
        try:
            value = Value.model_validate(raw_value)
        except ValidationError as exc:
            salvaged = salvage_value(raw_value, exc)
            if isinstance(salvaged, BadPart):
                where = _entry_with(entry, salvaged.container, field)
                yield _part_letter(salvaged, where, common)
                return
            value, raw_value, bad = salvaged.value, salvaged.raw, salvaged.bad
            coerced, flags = coerced + salvaged.coerced, salvaged.item_coerced
    flagged = bool(coerced or flags)  # checked once: valid input skips all of it
    phone_number_id = value.metadata.phone_number_id if value.metadata else None
    business = phone_number_id or "-"  # Meta always sends metadata; never key on "None"
    # Events carry the dicts as received (bar coercions): validation does not rewrite values.
    context = raw_value.copy()  # (cheaper than a comprehension, in the same order)
    for items in ("messages", "statuses", "errors"):
        context.pop(items, None)
    base: dict[str, Any] = {
        **common,
        "field": field,
        "entry_id": entry.id,
        "entry_time": entry.time,
        "phone_number_id": phone_number_id,
        "value_context": context,
    }
    prefix = ""
    if field != "messages":
        base["observe_only"], prefix = True, f"{field}:"
    make = EventMaker(base)
    contacts = value.contacts or []
    own = iter(flags.get("messages", ()))
    messages: Sequence[Message | fast.Message] = value.messages or []
    for message, raw_message in zip(messages, raw_value.get("messages") or [], strict=True):
        # One identity per customer (operators/identity.py): the BSUID, else the phone.
        wa_id, user_id = message.from_, message.from_user_id
        if (
            (user_id is None or wa_id is None)
            and contacts
            and (contact := _contact_for(contacts, wa_id)) is not None
        ):
            wa_id, user_id = wa_id or contact.wa_id, user_id or contact.user_id
        event = make.person(
            prefix + message.id,
            f"{business}:{user_id or wa_id or '-'}",
            EventKind.MESSAGE,
            wa_id,
            user_id,
            raw_message,
        )
        if message.system is not None and (change := identity_change(raw_message)):
            event = event.model_copy(update={"identity_change": change})
        yield _flag(event, coerced + next(own, ())) if flagged else event
    own = iter(flags.get("statuses", ()))
    statuses: Sequence[Status | fast.Status] = value.statuses or []
    for status, raw_status in zip(statuses, raw_value.get("statuses") or [], strict=True):
        wa_id, user_id = status.recipient_id, status.recipient_user_id
        if user_id is None and contacts and (contact := _contact_for(contacts, wa_id)):
            user_id = contact.user_id
        if raw_status.get("recipient_type") == "group":
            # A status of a message sent to a group: the group's conversation (fields.py).
            conversation = f"{business}:group:{wa_id or '-'}"
            wa_id = user_id = None
        else:
            conversation = conversation_key(business, user_id, wa_id)
        event = make.person(
            f"{prefix}{status.id}:{status.status}",
            conversation,
            EventKind.STATUS,
            wa_id,
            user_id,
            raw_status,
        )
        yield _flag(event, coerced + next(own, ())) if flagged else event
    for raw_error in raw_value.get("errors") or []:
        event = make.other(
            prefix + _error_key(phone_number_id, raw_error),
            f"{business}:-",
            EventKind.ERROR,
            raw_error,
        )
        yield _flag(event, coerced) if flagged else event
    for part in bad:
        key = _bad_item_key(part, phone_number_id)
        key = prefix + key if key is not None else None
        yield _part_letter(part, _entry_with(entry, part.container, field), common, key)
    if not (value.messages or value.statuses or value.errors or bad):
        # A messages change with nothing we split on is still passed on, never dropped.
        yield _flag(_change_event(entry, field, raw_value, common), coerced)


_flag = flag


def _contact_for(
    contacts: Sequence[Contact | fast.Contact], wa_id: str | None
) -> Contact | fast.Contact | None:
    """The value's contact for the phone `wa_id` (the only one, unless it is another's)."""
    if len(contacts) == 1:
        only = contacts[0]
        return only if wa_id is None or only.wa_id in (None, wa_id) else None
    if wa_id is not None:
        for contact in contacts:
            if contact.wa_id == wa_id:
                return contact
    return None


def _error_key(phone_number_id: str | None, raw_error: Any) -> str:
    return "error:" + content_hash(phone_number_id, raw_error)


def _bad_item_key(part: BadPart, phone_number_id: str | None) -> str | None:
    """The event key the item would have had, when its own fields still give it."""
    item = part.item
    if part.what == "error":
        return _error_key(phone_number_id, item)
    if not isinstance(item, dict):
        return None
    wamid = item.get("id")
    if not isinstance(wamid, str) or not wamid:
        return None
    if part.what == "message":
        return wamid
    state = item.get("status")
    return f"{wamid}:{state}" if isinstance(state, str) and state else None


def _entry_with(entry: AnyEntry, value: Any, field: str = "messages") -> dict[str, Any]:
    """The entry holding just one messages value, for a rebuilt envelope."""
    out: dict[str, Any] = {"id": entry.id, "changes": [{"field": field, "value": value}]}
    if entry.time is not None:
        out["time"] = entry.time
    return out


def _change_event(
    entry: AnyEntry, field: str, value: dict[str, Any], common: dict[str, Any]
) -> WebhookEvent:
    return WebhookEvent.parsed(
        event_key=f"change:{field}:" + content_hash(entry.id, entry.time, field, value),
        conversation_key=f"{entry.id}:{field}",
        kind=EventKind.CHANGE,
        field=field,
        entry_id=entry.id,
        entry_time=entry.time,
        payload=value,
        **common,
    )


def _summary(exc: ValidationError) -> str:
    return summary(exc.errors())


def parse_batch(
    app_secret: AppSecret | None,
) -> Callable[[list[InboundMessage]], list[WebhookEvent | DeadLetter]]:
    """The `flat_map_batch` step: every inbound record of a batch, parsed."""

    def parse(
        batch: list[InboundMessage],
    ) -> list[WebhookEvent | DeadLetter]:
        out: list[WebhookEvent | DeadLetter] = []
        for msg in batch:
            parsed = parse_record(
                msg.value,
                SourcePosition(
                    topic=msg.topic or "", partition=msg.partition or 0, offset=msg.offset or 0
                ),
                app_secret,
                # (type, ms): type 0 is "no timestamp"
                msg.timestamp[1] if msg.timestamp and msg.timestamp[0] else None,
            )
            out.extend(parsed)
        # Counted per batch: each metric update takes a lock.
        kinds = Counter([item.kind if type(item) is WebhookEvent else None for item in out])
        for kind, count in kinds.items():
            if kind is None:
                metrics.PARSE_ERRORS.inc(count)
            else:
                metrics.EVENTS_SPLIT.labels(kind.value).inc(count)
        return out

    return parse


def is_event(item: WebhookEvent | DeadLetter) -> TypeGuard[WebhookEvent]:
    return isinstance(item, WebhookEvent)
