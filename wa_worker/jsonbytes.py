"""JSON encoding on the hot path: orjson (≈10× the stdlib here), stdlib for what orjson refuses."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Compact JSON bytes. Meta's payloads may hold what orjson rejects (integers beyond 64 bits,
    lone surrogates decoded from escapes); those few go through the stdlib encoder."""
    try:
        return orjson.dumps(value, default=str)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), default=str).encode()
