"""Who the customer of an event is, and the conversation key that follows from it. Pure.

The rule (README, "One identity per customer"): a customer is keyed by the business-scoped user
id (BSUID) whenever the payload carries one, else by the phone number. Since April 2026 Meta
sends the BSUID with every message, status, echo, call and preference of a customer
(`from_user_id`, `recipient_user_id`, `to_user_id`, `contacts[].user_id`, `user_id`), and may
leave the phone number out for customers with a username: keyed by BSUID first, every event of
one customer lands on one conversation key whichever other identifiers it carries. A phone
number keys only payloads without a BSUID (those from before April 2026, and a `failed` status
of a message sent to a phone number). So a customer whose older payloads carried only the phone
changes key once, when their first payload with a BSUID arrives.
"""

from __future__ import annotations

from typing import Any


def conversation_key(business: str, user_id: str | None, wa_id: str | None) -> str:
    return f"{business}:{user_id or wa_id or '-'}"


def text(value: Any) -> str | None:
    """An identifier as Meta sends it (a non-empty string), else None."""
    return value if isinstance(value, str) and value else None


def contact_user_id(contacts: Any, wa_id: str | None) -> str | None:
    """The BSUID of the value's contact for `wa_id` (the only contact when there is one)."""
    if not isinstance(contacts, list) or not contacts:
        return None
    if len(contacts) == 1:
        only = contacts[0]
        if isinstance(only, dict) and (wa_id is None or only.get("wa_id") in (None, wa_id)):
            return text(only.get("user_id"))
        return None
    for contact in contacts:
        if isinstance(contact, dict) and wa_id is not None and contact.get("wa_id") == wa_id:
            return text(contact.get("user_id"))
    return None


def identity_change(message: dict[str, Any]) -> dict[str, str | None] | None:
    """Both identifiers of a `user_changed_number` / `user_changed_user_id` system message:
    the sender's as they were (`from`, `from_user_id`) and the new ones the system object
    gives (`wa_id` or the older `new_wa_id`; `user_id`)."""
    system = message.get("system")
    if not isinstance(system, dict):
        return None
    kind = system.get("type")
    if kind not in ("user_changed_number", "user_changed_user_id"):
        return None
    previous_wa_id, previous_user_id = text(message.get("from")), text(message.get("from_user_id"))
    wa_id = text(system.get("new_wa_id")) or text(system.get("wa_id"))
    user_id = text(system.get("user_id")) or text(system.get("new_user_id"))
    return {
        "type": kind,
        "previous_wa_id": previous_wa_id,
        "wa_id": wa_id or previous_wa_id,  # a BSUID change keeps the number
        "previous_user_id": previous_user_id,
        "user_id": user_id,
    }
