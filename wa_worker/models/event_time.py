"""An event's own time: when Meta says it happened, in seconds since the epoch. Pure."""

from __future__ import annotations

import math
from typing import Any

from wa_worker.models.records import EventKind, WebhookEvent

# Kinds whose item carries Meta's `timestamp` (a contact sync has it in its `metadata`).
_STAMPED = frozenset(EventKind) - {EventKind.CHANGE, EventKind.ERROR}


def event_time(event: WebhookEvent) -> float | None:
    """The item's `timestamp` (message, status, echo, call, ...), else the entry's `time`
    (account changes, value-level errors), else None."""
    if event.kind in _STAMPED:
        payload = event.payload
        stamp = payload.get("timestamp")
        if type(stamp) is str:  # the common case, checked first: this runs for every record
            try:
                value = float(stamp)
            except ValueError:
                value = math.nan
            if math.isfinite(value):
                return value
        if stamp is None and event.kind is EventKind.STATE_SYNC:
            metadata = payload.get("metadata")
            stamp = metadata.get("timestamp") if isinstance(metadata, dict) else None
        if (seconds := _seconds(stamp)) is not None:
            return seconds
    if event.entry_time is not None:
        return float(event.entry_time)
    return None


def _seconds(stamp: Any) -> float | None:
    if not isinstance(stamp, (str, int, float)) or isinstance(stamp, bool):
        return None
    try:
        value = float(stamp)
    except (ValueError, OverflowError):  # bad input must not stop the flow
        return None
    return value if math.isfinite(value) else None
