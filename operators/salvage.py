"""What is still usable in a webhook that failed validation as a whole.

Runs only after the one-shot validation of a payload or of a `messages` value has failed, so
valid input pays nothing for it. Pydantic reports every error with its location in one pass;
from those locations:
- an error inside one part (an entry, a change, a message, a status, a value-level error)
  makes that part a dead letter of its own, and its siblings go on;
- a number where Meta sends a string of digits (a timestamp, a phone number id) is coerced to
  that string, and the event lists the field in `coerced`;
- any other error makes the enclosing value (or the whole payload) unusable, as before.
Re-driving cannot mend bad bytes, so losing the siblings with them would lose them for good.
Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from wa_worker.errors import InputError
from wa_worker.models.records import ErrorClass
from wa_worker.models.webhook import Entry, Value

ITEM_LISTS = {"messages": "message", "statuses": "status", "errors": "error"}
# Where a number stands for digits without doubt, and the path the event names it by.
_VALUE_COERCIBLE = {
    ("metadata", "phone_number_id"): "value_context.metadata.phone_number_id",
    ("metadata", "display_phone_number"): "value_context.metadata.display_phone_number",
}
_ITEM_COERCIBLE = {("messages", "timestamp"), ("statuses", "timestamp")}


@dataclass(frozen=True, slots=True)
class BadPart:
    """A part of a webhook that failed validation, dead-lettered alone."""

    what: str  # entry, change, messages value, message, status, error
    reason: str
    # The part inside its container: for an entry or a change, the entry holding just it; for
    # a messages value or one of its items, the value holding just it (for rebuilt envelopes).
    container: Any
    item: Any = None  # a message, status or error as received, to key the dead letter on


@dataclass(frozen=True, slots=True)
class SalvagedValue:
    value: Value
    raw: dict[str, Any]  # the value as received, coerced, without its bad items
    coerced: tuple[str, ...]  # value-level fields coerced, as paths in the event
    item_coerced: dict[str, list[tuple[str, ...]]]  # per item list, per kept item
    bad: list[BadPart]


def summary(errors: list[ErrorDetails], limit: int = 3) -> str:
    parts = []
    for error in errors[:limit]:
        loc = ".".join(str(p) for p in error["loc"]) or "(root)"
        parts.append(f"{loc}: {error['msg']}")
    more = len(errors) - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def salvage_entries(body: Any, exc: ValidationError) -> list[Entry | BadPart]:
    """The payload's entries in order, valid ones without their bad changes, and its bad parts.
    Raises InputError when an error lies outside every entry (the payload itself is unusable)."""
    errors = exc.errors()
    bad_entries: dict[int, list[ErrorDetails]] = {}
    bad_changes: dict[int, dict[int, list[ErrorDetails]]] = {}
    for error in errors:
        loc = error["loc"]
        if len(loc) < 2 or loc[0] != "entry" or not isinstance(loc[1], int):
            raise InputError(
                f"not a WhatsApp payload: {summary(errors)}", ErrorClass.INVALID_PAYLOAD
            ) from exc
        if len(loc) >= 4 and loc[2] == "changes" and isinstance(loc[3], int):
            bad_changes.setdefault(loc[1], {}).setdefault(loc[3], []).append(error)
        else:
            bad_entries.setdefault(loc[1], []).append(error)
    out: list[Entry | BadPart] = []
    for index, raw_entry in enumerate(body["entry"]):
        if index in bad_entries:
            out.append(BadPart("entry", summary(bad_entries[index]), raw_entry))
            continue
        bad = bad_changes.get(index)
        if bad is None:
            out.append(Entry.model_validate(raw_entry))
            continue
        changes = raw_entry["changes"]
        kept = [change for j, change in enumerate(changes) if j not in bad]
        out.append(Entry.model_validate({**raw_entry, "changes": kept}))
        out.extend(
            BadPart("change", summary(errs), {**raw_entry, "changes": [changes[j]]})
            for j, errs in sorted(bad.items())
        )
    return out


def salvage_value(raw_value: dict[str, Any], exc: ValidationError) -> SalvagedValue | BadPart:
    """The value coerced and without its bad items, or why the value as a whole is unusable."""
    errors = exc.errors()
    fixes: dict[tuple[str | int, ...], str] = {}
    bad: dict[tuple[str, int], list[ErrorDetails]] = {}
    for error in errors:
        loc = error["loc"]
        digits = _digits(error) if _coercible(loc) else None
        if digits is not None:
            fixes[loc] = digits
        elif len(loc) >= 2 and loc[0] in ITEM_LISTS and isinstance(loc[1], int):
            bad.setdefault((str(loc[0]), loc[1]), []).append(error)
        else:
            return BadPart("messages value", summary(errors), raw_value)
    raw = dict(raw_value)
    coerced: list[str] = []
    for (outer, inner), path in _VALUE_COERCIBLE.items():
        if (outer, inner) in fixes:
            raw[outer] = {**raw[outer], inner: fixes[(outer, inner)]}
            coerced.append(path)
    context = {k: v for k, v in raw.items() if k not in ITEM_LISTS}
    parts: list[BadPart] = []
    item_coerced: dict[str, list[tuple[str, ...]]] = {}
    for name, kind in ITEM_LISTS.items():
        items = raw_value.get(name)
        if not isinstance(items, list):
            continue  # absent or null: anything else was a value-level error
        kept: list[Any] = []
        flags: list[tuple[str, ...]] = []
        for index, item in enumerate(items):
            errs = bad.get((name, index))
            if errs is not None:
                parts.append(BadPart(kind, summary(errs), {**context, name: [item]}, item))
                continue
            digits = fixes.get((name, index, "timestamp"))
            kept.append(item if digits is None else {**item, "timestamp": digits})
            flags.append(() if digits is None else ("payload.timestamp",))
        raw[name] = kept
        item_coerced[name] = flags
    return SalvagedValue(Value.model_validate(raw), raw, tuple(coerced), item_coerced, parts)


def _coercible(loc: tuple[str | int, ...]) -> bool:
    if len(loc) == 2:
        return loc in _VALUE_COERCIBLE
    return len(loc) == 3 and isinstance(loc[1], int) and (loc[0], loc[2]) in _ITEM_COERCIBLE


def _digits(error: ErrorDetails) -> str | None:
    """The digits a number stands for, when a string was wanted; None when it is no number."""
    if error["type"] != "string_type":
        return None
    given = error.get("input")
    if isinstance(given, bool):
        return None
    if isinstance(given, int):
        return str(given)
    if isinstance(given, float) and math.isfinite(given) and given.is_integer():
        return str(int(given))
    return None
