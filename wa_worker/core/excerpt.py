"""A handler's error body cut down to what may go into a DLQ reason and a log line.

Error bodies often echo the request (web frameworks' validation errors) or are HTML pages, so
the body is never kept as it is: JSON keeps its keys and structure with every string masked;
an HTML page is its title and headings; other text loses quoted strings, e-mail addresses,
digit runs and every text of the request found in it. Either is one line of at most
HANDLER_ERROR_EXCERPT_CHARS characters. Pure.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from typing import Any

MASK = "***"

_HTML = re.compile(r"^\s*<(!doctype|html|head|body|[a-z][a-z0-9]*[\s>])", re.IGNORECASE)
_HEADINGS = re.compile(r"<(title|h1|h2)\b[^>]*>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
# A double quote left open (a body cut short) masks to the end.
_QUOTED = re.compile(r"\"[^\"]*(\"|$)|'[^']*'|“[^”]*(”|$)")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_DIGITS = re.compile(r"\d[\d\s().+-]{2,}\d")  # 4+ digits, spaced or not: phones, cards, ids
_SPACE = re.compile(r"\s+")
# Small numbers (codes, counts) say what went wrong; longer ones may be phone numbers.
_PLAIN_NUMBER_LIMIT = 10_000
# Request texts shorter than this are left alone: masking "ok" everywhere would hide the error.
_KNOWN_MIN_CHARS = 4
# Only the start of a body is looked at: a multi-megabyte error page costs no more than this.
_READ_CHARS = 64 * 1024


def error_excerpt(body: str, limit: int, request_texts: Iterable[str] = ()) -> str:
    """At most `limit` characters of `body`, masked and on one line; "" when `limit` is 0.
    `request_texts`: the strings the request carried, masked wherever the body echoes them."""
    if limit <= 0:
        return ""
    text = body[:_READ_CHARS].strip()
    if not text:
        return ""
    shown = _json_excerpt(text)
    if shown is None:
        known = sorted({t for t in request_texts if len(t.strip()) >= _KNOWN_MIN_CHARS}, key=len)
        shown = _text_excerpt(text, known[::-1])
    return one_line(shown, limit)


def one_line(text: str, limit: int = 500) -> str:
    """Error text as one line of at most `limit` characters: one log record, one table row."""
    shown = _SPACE.sub(" ", text).strip()
    return shown if len(shown) <= limit else shown[: max(0, limit - 1)] + "…"


def _json_excerpt(text: str) -> str | None:
    if text[0] not in "{[":
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    try:
        return json.dumps(_masked(value), ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        return f"<JSON nested too deep, {len(text)} chars>"


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {_key(k): _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float) and abs(value) < _PLAIN_NUMBER_LIMIT:
        return value
    return MASK


def _key(key: str) -> str:
    """Keys are the structure; a key that is data (a phone number, an address) is masked."""
    return _mask_text(key) if _EMAIL.search(key) or _DIGITS.search(key) else key


def request_texts(value: Any) -> list[str]:
    """Every string in a JSON value (the event sent), for `error_excerpt` to mask."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in request_texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in request_texts(v)]
    return [value] if isinstance(value, str) else []


def _text_excerpt(text: str, known: list[str]) -> str:
    if _HTML.match(text):  # a page's body is where requests are echoed: keep its headings
        headings = [_TAG.sub(" ", m.group(2)) for m in _HEADINGS.finditer(text)]
        text = " · ".join(dict.fromkeys(h for h in headings if h.strip())) or "HTML page"
    text = html.unescape(_SPACE.sub(" ", text))
    for echoed in known:  # longest first, so a text is masked whole before its parts
        text = text.replace(echoed, MASK)
    return _mask_text(text)


def _mask_text(text: str) -> str:
    text = _QUOTED.sub(MASK, text)
    text = _EMAIL.sub(MASK, text)
    return _DIGITS.sub(MASK, text)
