"""Secrets that never leave the process: one rule for logs, /health and the tools' output."""

from __future__ import annotations

import re

# The password runs to the last `@` before the host, as URL parsers (and redis-py) read it: a
# raw `@` inside it must not leave its end visible.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^/\s]*@", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """Passwords inside URLs (redis://:secret@host) become ***."""
    return _URL_PASSWORD.sub(r"\1***@", text)
