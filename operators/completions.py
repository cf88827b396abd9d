"""A Bytewax source that feeds the I/O runtime's results back into the dataflow."""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Protocol

from bytewax.inputs import DynamicSource, StatelessSourcePartition

from wa_worker.core.runtime import IoRuntime
from wa_worker.models.completions import Completion

_MAX_BATCH = 5000


class EndSignal(Protocol):
    """When the source may end: the worker's drain (`wa_worker.core.shutdown.Drain`), or a replay's
    `operators.finish.FinishTracker` once every event has its outcome."""

    @property
    def draining(self) -> bool: ...

    def expired(self) -> bool: ...


class _CompletionPartition(StatelessSourcePartition[tuple[str, Completion]]):
    def __init__(self, runtime: IoRuntime, drain: EndSignal) -> None:
        self._runtime = runtime
        self._completions = runtime.completions
        self._drain = drain

    def next_batch(self) -> list[tuple[str, Completion]]:
        # Draining: end once every started call has reported back (or the drain timed out);
        # work not started stays in the snapshotted state for the next run.
        if (
            self._drain.draining
            and self._completions.empty()
            and (self._runtime.idle() or self._drain.expired())
        ):
            raise StopIteration
        # An empty batch makes Bytewax wait 1 ms before asking again: no busy loop.
        batch: list[tuple[str, Completion]] = []
        try:
            while len(batch) < _MAX_BATCH:
                batch.append(self._completions.get_nowait())
        except queue.Empty:
            pass
        return batch


class CompletionSource(DynamicSource[tuple[str, Completion]]):
    """Each worker drains the process's shared queue; the keyed exchange that follows routes
    every result to the worker owning its conversation (the one that started the work)."""

    def __init__(self, runtime: Callable[[], IoRuntime], drain: EndSignal) -> None:
        self._runtime = runtime  # started lazily, in the process that runs the partition
        self._drain = drain

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CompletionPartition:
        return _CompletionPartition(self._runtime(), self._drain)
