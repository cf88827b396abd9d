"""Events in recovery snapshots as plain values: what `Pending` and `Held` pickle.

Bytewax pickles each conversation's snapshot on its own at every epoch close, for every
conversation with work left (~2,000 at a time): so no pickle shares the class lookups of
another, and pickling a `WebhookEvent` model (itself, its `EventKind`, its `SourcePosition`
model, each aware datetime with its timezone: each a reduce with class lookups) was most of
the pause that made the p99. Packed, an event is a marker and its field dict with the enum,
the nested model and the time as plain values; a UTC time is its microseconds since the
epoch (exact; it comes back with `datetime.UTC` as its zone, where the parser's had pydantic's
equal one). Unpacking builds the models without validating again (the values came from
valid models). A snapshot holding the model or datetime itself (taken before this module)
unpacks as it is, so old snapshots resume; a field added later is filled with its default.
Anything but a pydantic event, or a time not in UTC, is pickled as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from wa_worker.models.records import EventKind, SourcePosition, WebhookEvent

_MARK = "wa-event-1"  # the packed form's version
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_ZERO = timedelta(0)


def pack_time(value: datetime | None) -> datetime | int | None:
    if value is None or value.tzinfo is None or value.utcoffset() != _ZERO:
        return value
    return (value - _EPOCH) // _MICROSECOND


def unpack_time(value: datetime | int | None) -> datetime | None:
    if isinstance(value, int):
        return _EPOCH + timedelta(microseconds=value)
    return value


def pack(event: Any) -> Any:
    if type(event) is not WebhookEvent or not isinstance(event, BaseModel):
        return event
    values = dict(event.__dict__)
    kind, source = values["kind"], values["source"]
    values["kind"] = kind.value
    values["received_at"] = pack_time(values["received_at"])
    if source is not None:
        values["source"] = (source.topic, source.partition, source.offset)
    return (_MARK, values)


def unpack(packed: Any) -> Any:
    if not (isinstance(packed, tuple) and len(packed) == 2 and packed[0] == _MARK):
        return packed  # the event itself: a snapshot taken before packing
    values = dict(packed[1])
    values["kind"] = EventKind(values["kind"])
    values["received_at"] = unpack_time(values["received_at"])
    if (source := values["source"]) is not None:
        topic, partition, offset = source
        values["source"] = SourcePosition.model_construct(
            topic=topic, partition=partition, offset=offset
        )
    return WebhookEvent.model_construct(**values)
