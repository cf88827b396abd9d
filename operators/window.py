"""The reorder window as its own step: events wait here, per conversation, before anything
claims or handles them (the rules are operators/reorder.py's).

Why a step of its own, keyed by shard and not by conversation: held in each conversation's
logic, every windowed event cost that logic a timer and a second Bytewax activation of its
own (`on_notify`), and it could be claimed only once released, one claim round trip per
conversation. A shard holds the windows of many conversations; one activation releases every
event whose turn has come in all of them, and the released batch goes on to be claimed
together (operators/preclaim.py) in window order, ranked statuses included.

A shard's state is its conversations' heaps, snapshotted by Bytewax recovery like the
conversations' queues: held events are neither lost nor re-read across a restart. The timers
are not snapshotted; they are rebuilt from the heaps. At the end of the input (a replay, or a
drain) nothing more can arrive: everything held is released then, in order.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bytewax.operators import StatefulBatchLogic

from wa_worker.models.records import WebhookEvent
from wa_worker.operators import reorder
from wa_worker.operators.conversation import Counter, Uncounted

# Enough shards to spread over a cluster's workers (keys are routed by hash), few enough
# that each activation touches a handful of states. Changing it is safe: a resumed shard
# releases what it held when its time comes, whatever shard its conversations map to now.
SHARDS = 64
_SHARD_KEYS = tuple(str(i) for i in range(SHARDS))


def shard_of(conversation_key: str) -> str:
    """Stable across processes and runs (unlike `hash`, salted per process)."""
    return _SHARD_KEYS[zlib.crc32(conversation_key.encode()) % SHARDS]


@dataclass
class WindowState:
    # Conversation key -> its held events, a heap (operators/reorder.py).
    held: dict[str, list[reorder.Held]] = field(default_factory=dict)
    arrivals: int = 0  # events held so far; orders ties by arrival


class WindowLogic(StatefulBatchLogic[WebhookEvent, WebhookEvent, WindowState]):
    def __init__(
        self,
        route_key: Callable[[WebhookEvent], str],
        window: timedelta,
        resume: WindowState | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        backlog: Counter | None = None,
    ) -> None:
        self._route_key = route_key
        self._window = window
        self._clock = clock
        self._backlog = backlog or Uncounted()  # held events count as taken in
        self._state = WindowState()
        # (release time, conversation key): one per conversation with events held, at its
        # front's release when pushed. A front replaced by an earlier-stamped event arrived
        # later, so releases later: the entry fires early, finds nothing due, is pushed again.
        self._timers: list[tuple[datetime, str]] = []
        if resume is not None:
            self._state.held = {key: list(heap) for key, heap in resume.held.items()}
            self._state.arrivals = resume.arrivals
            for key, heap in self._state.held.items():
                self._timers.append((heap[0].arrived_at + window, key))
            heapq.heapify(self._timers)
            self._backlog.add(sum(len(heap) for heap in self._state.held.values()))

    def on_batch(self, values: list[WebhookEvent]) -> tuple[Iterable[WebhookEvent], bool]:
        now = self._clock()
        held, arrivals, taken = self._state.held, self._state.arrivals, 0
        for event in values:
            key = self._route_key(event)
            heap = held.get(key)
            if heap is None:
                heap = held[key] = []
                heapq.heappush(self._timers, (now + self._window, key))
            # A redelivered copy is held too: its conversation drops it, the one place that
            # counts duplicates (and where a replay counts every event as arrived).
            reorder.hold(heap, event, now, arrivals)
            arrivals += 1
            taken += 1
        self._state.arrivals = arrivals
        if taken:
            self._backlog.add(taken)
        return self._release(now), not held

    def on_notify(self) -> tuple[Iterable[WebhookEvent], bool]:
        return self._release(self._clock()), not self._state.held

    def on_eof(self) -> tuple[Iterable[WebhookEvent], bool]:
        """Nothing more can arrive: every held event goes, each conversation in order."""
        out = [h.event for heap in self._state.held.values() for h in sorted(heap)]
        self._state.held.clear()
        self._timers.clear()
        if out:
            self._backlog.done(len(out))
        return out, True

    def notify_at(self) -> datetime | None:
        return self._timers[0][0] if self._timers else None

    def snapshot(self) -> WindowState:
        # Copies of the heaps, as Bytewax asks; the held events themselves are not changed.
        held = {key: list(heap) for key, heap in self._state.held.items()}
        return WindowState(held, self._state.arrivals)

    def _release(self, now: datetime) -> list[WebhookEvent]:
        out: list[WebhookEvent] = []
        timers, held, window = self._timers, self._state.held, self._window
        while timers and timers[0][0] <= now:
            _, key = heapq.heappop(timers)
            heap = held[key]
            out.extend(h.event for h in reorder.due(heap, now, window))
            if heap:
                heapq.heappush(timers, (heap[0].arrived_at + window, key))
            else:
                del held[key]
        if out:
            self._backlog.done(len(out))
        return out


def window_builder(
    route_key: Callable[[WebhookEvent], str],
    window_ms: int,
    backlog: Counter | None = None,
) -> Callable[[WindowState | None], WindowLogic]:
    window = timedelta(milliseconds=window_ms)
    return lambda resume: WindowLogic(route_key, window, resume, backlog=backlog)
