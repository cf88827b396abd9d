"""Dead letters shown to people: the envelope keeps its structure and keys, and only the values
of structural fields; every other string or number becomes `***(N chars)`.

An allow-list, not a list of known text fields: a field Meta adds tomorrow (or one nobody
thought of, like a contact card's birthday or a referral's headline) is masked until someone
decides it is structural. Kept, outside a person's subtree:

- anywhere: `object`, `field`, `messaging_product` (which webhook), `phone_number_id`,
  `display_phone_number` (the business's own number), `type`, `status`, `event`,
  `direction`, `recipient_type`, `category`, `pricing_model`, `mime_type` (labels and
  states), `timestamp`, `expiration_timestamp`, `time`, error `code`;
- `id` directly in the envelope, an `entry`, a message, status, echo or call, a `context`,
  a `conversation`, a media object or a button/list reply (not a history thread's `id`,
  which is the customer's number);
- `title` directly in an `errors` item (elsewhere it is a job title or a button's text).

A person's subtree is everything under `contacts` (the sender's profile, wa_id and
business-scoped user ids, or shared contact cards) or `contact`: nothing in it is kept, labels
included. Customer ids elsewhere (`from`, `from_user_id`, `recipient_id`, `wa_id`, `to`, ...)
are simply not on the list. Booleans and nulls stay (flags such as `billable`).
"""

from __future__ import annotations

import json
from typing import Any

KEPT_ANYWHERE = frozenset(
    {
        "object",
        "field",
        "messaging_product",
        "phone_number_id",
        "display_phone_number",
        "type",
        "status",
        "event",
        "direction",
        "recipient_type",
        "category",
        "pricing_model",
        "mime_type",
        "timestamp",
        "expiration_timestamp",
        "time",
        "code",
    }
)
# Key -> the keys of the objects (or lists of objects) it is kept directly in; None is the
# envelope itself.
KEPT_UNDER: dict[str, frozenset[str | None]] = {
    "id": frozenset(
        {
            None,
            "entry",
            "messages",
            "statuses",
            "message_echoes",
            "calls",
            "context",
            "conversation",
            "image",
            "video",
            "audio",
            "document",
            "sticker",
            "button_reply",
            "list_reply",
        }
    ),
    "title": frozenset({"errors"}),
}
PERSONAL_SUBTREES = frozenset({"contacts", "contact"})
# Every key whose value may be kept somewhere.
KEPT_KEYS = KEPT_ANYWHERE | frozenset(KEPT_UNDER)


def mask(text: str) -> str:
    return f"***({len(text)} chars)"


def is_kept(key: str | None, parent: str | None) -> bool:
    """Whether the value of `key`, directly inside `parent`'s object, is structural."""
    if key is None:
        return False
    return key in KEPT_ANYWHERE or parent in KEPT_UNDER.get(key, frozenset())


def redact_value(
    value: Any,
    secrets: tuple[str, ...] = (),
    key: str | None = None,
    parent: str | None = None,
) -> Any:
    """A copy of a JSON value (the value of `key`, in an object under `parent`) with every
    string and number masked but the structural ones of the allow-list."""
    return _walk(value, secrets, key, parent, personal=False)


def _walk(
    value: Any, secrets: tuple[str, ...], key: str | None, parent: str | None, personal: bool
) -> Any:
    personal = personal or key in PERSONAL_SUBTREES
    if isinstance(value, dict):
        return {k: _walk(v, secrets, str(k), key, personal) for k, v in value.items()}
    if isinstance(value, list):  # items sit in the list's key, as an object's fields do
        return [_walk(v, secrets, key, parent, personal) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if not personal and is_kept(key, parent):
        return _without_secrets(value, secrets) if isinstance(value, str) else value
    return mask(value if isinstance(value, str) else json.dumps(value))


def _without_secrets(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def redact_envelope(raw: bytes, secrets: tuple[str, ...] = ()) -> Any:
    """The record value as JSON, redacted. The envelope's own `body` is the Meta payload (an
    object or its raw JSON string), not message text, so it is parsed and walked."""
    try:
        data = json.loads(raw)
    except ValueError:
        return f"<{len(raw)} bytes, not JSON; --show-body shows them>"
    except RecursionError:
        return _too_deep(raw)
    try:
        if not isinstance(data, dict) or "body" not in data:
            return redact_value(data, secrets)
        return {
            k: _redact_payload(v, secrets) if k == "body" else redact_value(v, secrets, k)
            for k, v in data.items()
        }
    except RecursionError:  # the walk (or the body's parse) goes deeper than Python can
        return _too_deep(raw)


def _too_deep(raw: bytes) -> str:
    return f"<{len(raw)} bytes, JSON nested too deep to redact; --show-body shows them>"


def _redact_payload(body: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return mask(body)
    return redact_value(body, secrets, "body")
