"""When a run over a bounded input (a replay file) has nothing left to do.

The worker never finishes; it drains on a signal and leaves waiting retries to the snapshot.
A replay must end on its own, but only once every event has an outcome, retries included.
Bytewax cannot tell: the conversation step also reads the completion source, which runs until
told to stop. So the run counts, under one lock: records the source emitted and records
parsed, events parsed and events that reached their conversation, and conversations that still
hold events (a conversation logic is kept exactly while its queue is not empty); events
waiting in the reorder window have not reached their conversation yet. Once the
source has ended and every count has caught up, the run is finished, and the completion source
ends as it does after a drain (when no call is outstanding), which ends the dataflow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import datetime

from bytewax.operators import StatefulBatchLogic

from wa_worker.models.completions import Claimed
from wa_worker.models.records import DeadLetter, Outcome, WebhookEvent
from wa_worker.operators.conversation import ConversationState, LogicValue
from wa_worker.operators.inbound import InboundMessage

ParseStep = Callable[[list[InboundMessage]], list[WebhookEvent | DeadLetter]]
Logic = StatefulBatchLogic[LogicValue, Outcome, ConversationState]
LogicBuilder = Callable[[ConversationState | None], Logic]


class FinishTracker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._input_ended = False
        self._emitted = 0  # records the source handed to the dataflow
        self._parsed = 0  # of those, records the parse step has seen
        self._events = 0  # events the parse step split out
        self._arrived = 0  # of those, events that reached their conversation
        self._open = 0  # conversation logics holding events

    def emitted(self, records: int) -> None:
        with self._lock:
            self._emitted += records

    def input_ended(self) -> None:
        with self._lock:
            self._input_ended = True

    @property
    def finished(self) -> bool:
        with self._lock:
            return (
                self._input_ended
                and self._parsed == self._emitted
                and self._arrived == self._events
                and self._open == 0
            )

    # The completion source's end-of-work signal (see operators/completions.py `EndSignal`):
    # a finished run ends it the way a drain does, and never gives up on outstanding calls.
    @property
    def draining(self) -> bool:
        return self.finished

    def expired(self) -> bool:
        return False

    @property
    def events(self) -> int:
        with self._lock:
            return self._events

    def counted_parse(self, parse: ParseStep) -> ParseStep:
        def counted(batch: list[InboundMessage]) -> list[WebhookEvent | DeadLetter]:
            out = parse(batch)
            events = sum(isinstance(item, WebhookEvent) for item in out)
            with self._lock:
                self._parsed += len(batch)
                self._events += events
            return out

        return counted

    def counted_logic(self, builder: LogicBuilder) -> LogicBuilder:
        return lambda resume: _CountedLogic(builder(resume), self)

    def settle(self, arrived: int, was_open: bool, now_open: bool) -> None:
        with self._lock:
            self._arrived += arrived
            self._open += int(now_open) - int(was_open)


class _CountedLogic(StatefulBatchLogic[LogicValue, Outcome, ConversationState]):
    """Delegates to the conversation logic, reporting arrivals and whether it still holds work
    (it asks to be kept exactly while its queue is not empty)."""

    def __init__(self, inner: Logic, tracker: FinishTracker) -> None:
        self._inner = inner
        self._tracker = tracker
        self._open = False

    def on_batch(self, values: list[LogicValue]) -> tuple[Iterable[Outcome], bool]:
        out, discard = self._inner.on_batch(values)
        self._report(sum(isinstance(v, WebhookEvent | Claimed) for v in values), discard)
        return out, discard

    def on_notify(self) -> tuple[Iterable[Outcome], bool]:
        out, discard = self._inner.on_notify()
        self._report(0, discard)
        return out, discard

    def on_eof(self) -> tuple[Iterable[Outcome], bool]:
        out, discard = self._inner.on_eof()
        self._report(0, discard)
        return out, discard

    def notify_at(self) -> datetime | None:
        return self._inner.notify_at()

    def snapshot(self) -> ConversationState:
        return self._inner.snapshot()

    def _report(self, arrived: int, discard: bool) -> None:
        was_open, self._open = self._open, not discard
        self._tracker.settle(arrived, was_open, self._open)
