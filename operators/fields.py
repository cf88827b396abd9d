"""Split the fields other than `messages` into one event per item. Pure, never raises.

Each field Meta documents with a list of items (echoes, calls, preferences, history messages,
contact syncs, group updates) gives one event per item, with its own kind, a stable event key
(the item's id where Meta gives one, else a hash of its content, so a redelivered item inside a
new batch is still recognised) and a per-customer conversation key (operators/identity.py). A
value whose shape is not the documented one returns None: the caller passes it on whole, as a
`change`, as it does for fields without items (account, template and phone-number updates).
The README's table of kinds lists every field with its keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from wa_worker.models import webhook_structs as fast
from wa_worker.models.records import EventKind, WebhookEvent
from wa_worker.models.webhook import Entry
from wa_worker.operators.identity import contact_user_id, conversation_key, text

ItemEvents = Iterator[WebhookEvent]
AnyEntry = Entry | fast.Entry  # checked by msgspec (valid input), else by pydantic (parse.py)


def content_hash(*parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def flag(event: WebhookEvent, coerced: tuple[str, ...]) -> WebhookEvent:
    """The event with the fields the worker rewrote. Set after building it, and only when
    there are some: passing even an empty `coerced` costs every event its validation."""
    return event.model_copy(update={"coerced": coerced}) if coerced else event


GROUP_FIELDS = frozenset(
    {
        "group_lifecycle_update",
        "group_participants_update",
        "group_settings_update",
        "group_status_update",
    }
)


def split_field(
    entry: AnyEntry, field: str, value: dict[str, Any], common: dict[str, Any]
) -> list[WebhookEvent] | None:
    """The events of one change of `field`, or None when it is not split per item."""
    splitter = _SPLITTERS.get(field) or (_groups if field in GROUP_FIELDS else None)
    if splitter is None:
        return None
    metadata = value.get("metadata")
    pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    phone_number_id = str(pnid) if isinstance(pnid, (str, int)) and pnid != "" else None
    own_number = metadata.get("display_phone_number") if isinstance(metadata, dict) else None
    split = _Split(entry, field, value, common, phone_number_id, text(own_number))
    events = list(splitter(split))
    return events or None


class _Split:
    """One change being split: what every event of it shares."""

    def __init__(
        self,
        entry: AnyEntry,
        field: str,
        value: dict[str, Any],
        common: dict[str, Any],
        phone_number_id: str | None,
        own_number: str | None,
    ) -> None:
        self.value = value
        self.phone_number_id = phone_number_id
        self.business = phone_number_id or "-"
        self.own_number = own_number
        self.base = {
            **common,
            "field": field,
            "entry_id": entry.id,
            "entry_time": entry.time,
            "phone_number_id": phone_number_id,
        }

    def items(self, name: str) -> list[dict[str, Any]] | None:
        """The value's list `name` when it is a list of objects (else None: not split)."""
        items = self.value.get(name)
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return None
        return items

    def context(self, *lists: str) -> dict[str, Any]:
        return {k: v for k, v in self.value.items() if k not in lists}

    def key(self, prefix: str, item: Any) -> str:
        return f"{prefix}:" + content_hash(self.phone_number_id, item)

    def event(
        self,
        kind: EventKind,
        event_key: str,
        conversation: str,
        item: dict[str, Any],
        context: dict[str, Any],
        wa_id: str | None = None,
        user_id: str | None = None,
    ) -> WebhookEvent:
        return WebhookEvent.parsed(
            event_key=event_key,
            conversation_key=conversation,
            kind=kind,
            wa_id=wa_id,
            user_id=user_id,
            payload=item,
            value_context=context,
            **self.base,
        )

    def customer(self, item: dict[str, Any], outbound: bool) -> tuple[str | None, str | None]:
        """(phone, BSUID) of the customer side of an item with `from` / `to`."""
        side = "to" if outbound else "from"
        wa_id, user_id = text(item.get(side)), text(item.get(f"{side}_user_id"))
        if user_id is None:
            user_id = contact_user_id(self.value.get("contacts"), wa_id)
        return wa_id, user_id

    def sent_by_business(self, item: dict[str, Any]) -> bool:
        sender = text(item.get("from"))
        if sender is not None and self.own_number is not None:
            return _digits(sender) == _digits(self.own_number)
        return str(item.get("direction", "")).upper() == "BUSINESS_INITIATED"


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isdigit())


def _echoes(split: _Split) -> ItemEvents:
    echoes = split.items("message_echoes")
    if echoes is None:
        return
    context = split.context("message_echoes")
    for echo in echoes:
        wamid = text(echo.get("id"))
        kind = echo.get("type")
        if wamid is None:
            key = split.key("echo", echo)
        elif kind in ("edit", "revoke"):
            key = f"{wamid}:{kind}"  # may reuse the id of the message it edits or revokes
        else:
            key = wamid
        wa_id, user_id = split.customer(echo, outbound=True)
        conversation = conversation_key(split.business, user_id, wa_id)
        yield split.event(EventKind.ECHO, key, conversation, echo, context, wa_id, user_id)


def _calls(split: _Split) -> ItemEvents:
    calls, statuses = split.items("calls"), split.items("statuses")
    if calls is None and statuses is None:
        return
    context = split.context("calls", "statuses")
    for call in calls or []:
        call_id, event = text(call.get("id")), text(call.get("event"))
        key = f"{call_id}:{event}" if call_id and event else split.key("call", call)
        wa_id, user_id = split.customer(call, outbound=split.sent_by_business(call))
        conversation = conversation_key(split.business, user_id, wa_id)
        yield split.event(EventKind.CALL, key, conversation, call, context, wa_id, user_id)
    for status in statuses or []:
        call_id, state = text(status.get("id")), text(status.get("status"))
        key = f"{call_id}:{state}" if call_id and state else split.key("call", status)
        wa_id, user_id = text(status.get("recipient_id")), text(status.get("recipient_user_id"))
        user_id = user_id or contact_user_id(split.value.get("contacts"), wa_id)
        conversation = conversation_key(split.business, user_id, wa_id)
        yield split.event(EventKind.CALL, key, conversation, status, context, wa_id, user_id)


def _preferences(split: _Split) -> ItemEvents:
    preferences = split.items("user_preferences")
    if preferences is None:
        return
    context = split.context("user_preferences")
    for preference in preferences:
        wa_id, user_id = text(preference.get("wa_id")), text(preference.get("user_id"))
        user_id = user_id or contact_user_id(split.value.get("contacts"), wa_id)
        conversation = conversation_key(split.business, user_id, wa_id)
        key = split.key("user_preference", preference)
        yield split.event(
            EventKind.USER_PREFERENCE, key, conversation, preference, context, wa_id, user_id
        )


def _history(split: _Split) -> ItemEvents:
    """One event per message of every thread. Keys are prefixed `history:` (a live message
    has its bare id), and a customer's history goes on a conversation of its own beside the
    live one, so thousands of synced messages do not hold up the customer's new ones."""
    history, followups = split.items("history"), split.items("messages")
    if history is None and followups is None:
        return
    context = split.context("history", "messages")
    for item in history or []:
        threads = item.get("threads")
        if not isinstance(threads, list) or not all(isinstance(t, dict) for t in threads):
            # No threads (history sharing declined: `errors`): the item is the event.
            conversation = f"{split.business}:-:history"
            key = split.key("history", item)
            yield split.event(EventKind.HISTORY, key, conversation, item, context)
            continue
        metadata = item.get("metadata")
        for thread in threads:
            messages = thread.get("messages")
            if not isinstance(messages, list):
                continue
            thread_context = {
                **context,
                "history_thread": {k: v for k, v in thread.items() if k != "messages"},
            }
            if metadata is not None:
                thread_context["history_metadata"] = metadata
            for message in messages:
                if not isinstance(message, dict):
                    continue
                yield _history_message(split, message, thread, thread_context)
    for message in followups or []:
        # A media message's content, sent after its `media_placeholder` under the same id.
        wamid = text(message.get("id"))
        key = f"history:{wamid}:media" if wamid else split.key("history", message)
        wa_id, user_id = split.customer(message, outbound=split.sent_by_business(message))
        conversation = conversation_key(split.business, user_id, wa_id) + ":history"
        yield split.event(EventKind.HISTORY, key, conversation, message, context, wa_id, user_id)


def _history_message(
    split: _Split, message: dict[str, Any], thread: dict[str, Any], context: dict[str, Any]
) -> WebhookEvent:
    wamid = text(message.get("id"))
    key = f"history:{wamid}" if wamid else split.key("history", message)
    wa_id, user_id = split.customer(message, outbound=split.sent_by_business(message))
    wa_id = wa_id or text(thread.get("id"))  # the thread is the customer's
    user_id = user_id or text(thread.get("user_id"))
    conversation = conversation_key(split.business, user_id, wa_id) + ":history"
    return split.event(EventKind.HISTORY, key, conversation, message, context, wa_id, user_id)


def _state_sync(split: _Split) -> ItemEvents:
    syncs = split.items("state_sync")
    if syncs is None:
        return
    context = split.context("state_sync")
    for sync in syncs:
        contact = sync.get("contact")
        contact = contact if isinstance(contact, dict) else {}
        wa_id = text(contact.get("phone_number")) or text(contact.get("wa_id"))
        user_id = text(contact.get("user_id"))
        conversation = conversation_key(split.business, user_id, wa_id)
        key = split.key("state_sync", sync)
        yield split.event(EventKind.STATE_SYNC, key, conversation, sync, context, wa_id, user_id)


def _groups(split: _Split) -> ItemEvents:
    groups = split.items("groups")
    if groups is None:
        return
    context = split.context("groups")
    field = split.base["field"]
    for group in groups:
        group_id = text(group.get("group_id")) or "-"
        conversation = f"{split.business}:group:{group_id}"
        key = f"group:{field}:" + content_hash(split.phone_number_id, field, group)
        yield split.event(EventKind.GROUP, key, conversation, group, context)


_SPLITTERS = {
    "smb_message_echoes": _echoes,
    "calls": _calls,
    "user_preferences": _preferences,
    "history": _history,
    "smb_app_state_sync": _state_sync,
}
