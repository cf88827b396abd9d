"""The process's shared parts, made once by a composition root (`dataflow.py` for the worker,
`wa-worker replay` for a file) and passed down to the steps that need them.

There are no module-level singletons: a second flow in one process (a test, a replay next to
the worker's code) gets parts of its own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from wa_worker.core import metrics
from wa_worker.core.backlog import Backlog
from wa_worker.core.breaker import CircuitBreaker
from wa_worker.core.dedupe import redis_store
from wa_worker.core.offsets import PositionBook
from wa_worker.core.runtime import IoRuntime, StoreFactory
from wa_worker.core.shutdown import Drain
from wa_worker.settings import Settings


@dataclass
class Services:
    settings: Settings
    breaker: CircuitBreaker  # the handler's circuit: pauses input and calls while it is open
    backlog: Backlog  # events taken in and not finished: input waits at a limit
    drain: Drain  # the first SIGTERM: no new input or work, in-flight calls finish
    positions: PositionBook  # offsets read and snapshotted, for the group-offset reporter
    store_factory: StoreFactory = redis_store  # Redis, or process memory for a replay
    _runtime: IoRuntime | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def create(cls, settings: Settings, store_factory: StoreFactory = redis_store) -> Services:
        breaker = CircuitBreaker()
        breaker.configure_from(settings)
        backlog = Backlog(settings.max_events_in_progress)
        metrics.EVENTS_IN_PROGRESS.set_function(lambda: backlog.count)
        return cls(settings, breaker, backlog, Drain(), PositionBook(), store_factory)

    def runtime(self) -> IoRuntime:
        """The process's one I/O runtime, shared by its Bytewax workers. Started on first use,
        so it runs in the process that runs the flow."""
        with self._lock:
            if self._runtime is None:
                self._runtime = IoRuntime(
                    self.settings, store_factory=self.store_factory, breaker=self.breaker
                )
            return self._runtime

    def close(self) -> None:
        """Write what the runtime still has queued for Redis (done markers above all)."""
        with self._lock:
            runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.close()

    def hold_input(self) -> bool:
        """Input waits while the handler's circuit is open and while the backlog is full."""
        return self.breaker.is_open() or self.backlog.full()

    def paused_reason(self) -> str | None:
        """Why the worker takes no input now (for /health), or None."""
        return "draining" if self.drain.draining else self.breaker.reason()

    def unfinished_calls(self) -> int:
        """Calls submitted to the runtime and not reported back (0 before it started)."""
        runtime = self._runtime
        return runtime.unfinished() if runtime is not None else 0
