"""The reorder window: a conversation's events start in Meta's timestamp order, within limits.

Meta does not deliver in order, and an edge that keys records by webhook id spreads one
conversation over partitions that are read independently, so arrival order is not event
order. Each arriving event is held for the window; the held event that sorts first (Meta's
`timestamp`, then the edge's `timestamp`, then arrival) is released once its own hold is
over, then the next, and so on. Releasing only from the front keeps two promises: no event
starts before it has waited the window, and released events go in sort order. So an event
with an earlier timestamp that arrives less than the window after a later one still goes
first; one that arrives later than that is not reordered, unless the later-stamped one is
still held behind another earlier-stamped event. (No rule can both reorder every pair closer
than the window and never reorder a pair further apart: three events can ask for a cycle.
This one keeps the first promise exactly.) An event behind a front that is still held waits
longer than the window, but only while earlier-stamped events keep coming.

Pure logic on plain values: the window step (operators/window.py) keeps a heap per
conversation in its snapshotted state.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from wa_worker.models.event_time import event_time
from wa_worker.models.records import WebhookEvent
from wa_worker.operators import snapshot_codec

SortKey = tuple[float, float, int]


@dataclass(order=True)
class Held:
    """An event in the window. Ordered by `key` alone, so a list of them is a heap."""

    key: SortKey
    event: WebhookEvent = field(compare=False)
    arrived_at: datetime = field(compare=False)
    # Set only in snapshots from when the window was kept in the conversation's state and
    # claimed early before it: the token the event's own claim must use to be ours.
    token: str | None = field(default=None, compare=False)
    # Redelivered copies of the event that came while it was held: they leave right after it
    # (operators/window.py), without a place in the order of their own.
    copies: list[WebhookEvent] = field(default_factory=list, compare=False)

    # Pickled (recovery snapshots) as plain values: operators/snapshot_codec.py.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["event"] = snapshot_codec.pack(self.event)
        state["arrived_at"] = snapshot_codec.pack_time(self.arrived_at)
        state["copies"] = [snapshot_codec.pack(copy) for copy in self.copies]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["event"] = snapshot_codec.unpack(state["event"])
        state["arrived_at"] = snapshot_codec.unpack_time(state["arrived_at"])
        state.setdefault("token", None)
        state["copies"] = [snapshot_codec.unpack(copy) for copy in state.get("copies", ())]
        self.__dict__.update(state)


def meta_time(event: WebhookEvent, arrived_at: datetime) -> float:
    """Meta's time of the event in seconds: the item's `timestamp` (message, status, echo,
    call, ...), else the entry's `time` (account changes), else the edge's receive time, else
    the arrival here."""
    if (stamp := event_time(event)) is not None:
        return stamp
    if event.received_at is not None:
        return event.received_at.timestamp()
    return arrived_at.timestamp()


def hold(heap: list[Held], event: WebhookEvent, arrived_at: datetime, seq: int) -> Held:
    """Put an event in the window; `seq` counts arrivals (ties go in arrival order)."""
    # Meta's timestamps are whole seconds: the edge's receive time orders ties within one.
    edge = event.received_at.timestamp() if event.received_at is not None else math.inf
    key = (meta_time(event, arrived_at), edge, seq)
    held = Held(key, event, arrived_at)
    heapq.heappush(heap, held)
    return held


def due(heap: list[Held], now: datetime, window: timedelta) -> list[Held]:
    """The held events whose turn has come, in order: the front, while its hold is over."""
    out: list[Held] = []
    while heap and heap[0].arrived_at + window <= now:
        out.append(heapq.heappop(heap))
    return out


def next_release(heap: list[Held], window: timedelta) -> datetime | None:
    return heap[0].arrived_at + window if heap else None
