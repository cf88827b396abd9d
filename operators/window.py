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

Redelivered copies (Meta retries, under new webhook ids too) are never dropped here: their
conversation drops them, the one place that counts duplicates. But a copy carries its
original's earlier timestamp, and held as an event of its own it would take the front of its
conversation's window and hold the later events behind it for another window. So a copy of
an event held here leaves right after it, and a copy of one this shard let through lately
goes on at once: neither can be put in order before an event that has gone.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
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
# Event keys a shard remembers as let through (not snapshotted): Meta's quick retries, and
# an edge's own redeliveries, come within seconds; a later copy waits the window again.
RECENTLY_RELEASED = 512


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
        self._held_keys: dict[str, reorder.Held] = {}  # event key -> its held event
        self._released: dict[str, None] = {}  # let through lately, oldest first
        if resume is not None:
            self._state.held = {key: list(heap) for key, heap in resume.held.items()}
            self._state.arrivals = resume.arrivals
            taken = 0
            for key, heap in self._state.held.items():
                self._timers.append((heap[0].arrived_at + window, key))
                for h in heap:
                    # Older snapshots may hold a copy as an event of its own: both stay.
                    self._held_keys.setdefault(h.event.event_key, h)
                    taken += 1 + len(h.copies)
            heapq.heapify(self._timers)
            self._backlog.add(taken)

    def on_batch(self, values: list[WebhookEvent]) -> tuple[Iterable[WebhookEvent], bool]:
        now = self._clock()
        held, arrivals, taken = self._state.held, self._state.arrivals, 0
        held_keys, passed = self._held_keys, []
        for event in values:
            # A copy (module docstring): after its held original, or on at once.
            if (original := held_keys.get(event.event_key)) is not None:
                original.copies.append(event)
                taken += 1
                continue
            if event.event_key in self._released:
                passed.append(event)
                continue
            key = self._route_key(event)
            heap = held.get(key)
            if heap is None:
                heap = held[key] = []
                heapq.heappush(self._timers, (now + self._window, key))
            held_keys[event.event_key] = reorder.hold(heap, event, now, arrivals)
            arrivals += 1
            taken += 1
        self._state.arrivals = arrivals
        if taken:
            self._backlog.add(taken)
        out = self._release(now)
        return (passed + out if passed else out), not held

    def on_notify(self) -> tuple[Iterable[WebhookEvent], bool]:
        return self._release(self._clock()), not self._state.held

    def on_eof(self) -> tuple[Iterable[WebhookEvent], bool]:
        """Nothing more can arrive: every held event goes, each conversation in order."""
        out = [e for heap in self._state.held.values() for h in sorted(heap) for e in _with(h)]
        self._state.held.clear()
        self._timers.clear()
        self._held_keys.clear()
        if out:
            self._backlog.done(len(out))
        return out, True

    def notify_at(self) -> datetime | None:
        return self._timers[0][0] if self._timers else None

    def snapshot(self) -> WindowState:
        # Copies of the heaps, as Bytewax asks; of a held event only its list of copies changes.
        held = {
            key: [replace(h, copies=list(h.copies)) if h.copies else h for h in heap]
            for key, heap in self._state.held.items()
        }
        return WindowState(held, self._state.arrivals)

    def _release(self, now: datetime) -> list[WebhookEvent]:
        out: list[WebhookEvent] = []
        timers, held, window = self._timers, self._state.held, self._window
        held_keys, released = self._held_keys, self._released
        while timers and timers[0][0] <= now:
            _, key = heapq.heappop(timers)
            heap = held[key]
            for h in reorder.due(heap, now, window):
                event_key = h.event.event_key
                held_keys.pop(event_key, None)  # absent for an older snapshot's second copy
                released[event_key] = None
                out.append(h.event)
                if h.copies:
                    out.extend(h.copies)
            if heap:
                heapq.heappush(timers, (heap[0].arrived_at + window, key))
            else:
                del held[key]
        while len(released) > RECENTLY_RELEASED:
            del released[next(iter(released))]
        if out:
            self._backlog.done(len(out))
        return out


def _with(held: reorder.Held) -> list[WebhookEvent]:
    """A held event and the copies that came while it was held."""
    return [held.event, *held.copies]


def window_builder(
    route_key: Callable[[WebhookEvent], str],
    window_ms: int,
    backlog: Counter | None = None,
) -> Callable[[WindowState | None], WindowLogic]:
    window = timedelta(milliseconds=window_ms)
    return lambda resume: WindowLogic(route_key, window, resume, backlog=backlog)
