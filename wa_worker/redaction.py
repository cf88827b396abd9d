"""Dead letters shown to people: the envelope keeps its structure and keys, while message text,
names and phone numbers are masked. Phone numbers are masked like log lines (`logs.redact`)."""

from __future__ import annotations

import json
from typing import Any

from wa_worker.logs import redact

# Keys whose string values are what customers wrote or who they are, anywhere in a payload.
_TEXT_KEYS = frozenset(
    {
        "body",
        "caption",
        "text",
        "title",
        "description",
        "name",
        "formatted_name",
        "first_name",
        "last_name",
        "middle_name",
        "username",
        "address",
        "street",
        "city",
        "email",
        "emoji",
        "filename",
        "payload",
        "response_json",
        "url",
    }
)
# Digits that are not phone numbers (unix times) stay readable.
_PLAIN_KEYS = frozenset({"timestamp"})


def mask(text: str) -> str:
    return f"***({len(text)} chars)"


def redact_value(value: Any, secrets: tuple[str, ...] = (), key: str | None = None) -> Any:
    """A copy of a JSON value with texts masked and phone numbers shortened to their end."""
    if isinstance(value, dict):
        return {k: redact_value(v, secrets, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, secrets, key) for v in value]
    if isinstance(value, str):
        if key in _TEXT_KEYS:
            return mask(value)
        return value if key in _PLAIN_KEYS else redact(value, secrets)
    return value


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
    return redact_value(body, secrets)
