"""JSON encoding on the hot path: orjson (≈10× the stdlib here), stdlib for what orjson refuses."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Compact JSON bytes. Meta's payloads may hold what orjson rejects (integers beyond 64 bits,
    lone surrogates decoded from escapes, nesting deeper than 255); those few go through the
    stdlib encoder, with NaN and infinities written as null, as orjson and pydantic write them."""
    try:
        return orjson.dumps(value, default=str)
    except TypeError:
        pass
    try:
        text = json.dumps(value, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:  # a non-finite float: round-trip it through null
        loose = json.dumps(value, separators=(",", ":"), default=str)
        text = json.dumps(json.loads(loose, parse_constant=lambda _: None), separators=(",", ":"))
    return text.encode()
