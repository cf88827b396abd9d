"""Graceful drain on SIGTERM / SIGINT.

Bytewax 0.21 dies on SIGTERM without closing anything, and on SIGINT closes without a final
snapshot. Instead, the first signal starts a drain: the inbound source stops taking records,
conversations start no new work, in-flight handler calls finish (up to DRAIN_TIMEOUT_S), and
then the completion source ends too. With every input ended, Bytewax closes the last epoch:
the sink flushes, recovery snapshots (pending retries included) and the process exits 0.
Calls still unfinished when the timeout runs out are abandoned (one line says how many): their
events are handled again after the restart, from the snapshot.

A second signal aborts at once: one line, exit code 128 + the signal (143 for SIGTERM, 130
for SIGINT), no flush and no snapshot, so the next start resumes from the last snapshot.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


class Drain:
    def __init__(self) -> None:
        self._started = threading.Event()
        self._deadline = float("inf")
        self.timeout_s = 30.0
        self._unfinished: Callable[[], int] = lambda: 0
        self._expiry_lock = threading.Lock()
        self._expiry_reported = False

    @property
    def draining(self) -> bool:
        return self._started.is_set()

    def start(self, reason: str) -> None:
        if not self._started.is_set():
            self._deadline = time.monotonic() + self.timeout_s
            self._started.set()
            log.info(
                "draining (%s): no new input; waiting up to %.0fs for in-flight work",
                reason,
                self.timeout_s,
            )

    def count_unfinished_with(self, count: Callable[[], int]) -> None:
        """How many calls are still unfinished (the I/O runtime's count), for the timeout line."""
        self._unfinished = count

    def expired(self) -> bool:
        """Asked once in-flight work is all that keeps the drain going."""
        if time.monotonic() < self._deadline:
            return False
        with self._expiry_lock:
            reported, self._expiry_reported = self._expiry_reported, True
        if not reported:
            log.warning(
                "DRAIN_TIMEOUT_S (%gs) ran out: abandoning %d unfinished calls (handler calls "
                "and claims); their events are handled again after the restart",
                self.timeout_s,
                self._unfinished(),
            )
        return True

    def install_signal_handlers(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if self.draining:
                log.warning(
                    "second %s: aborting without drain (exit %d); work since the last "
                    "snapshot is done again after the restart",
                    name,
                    128 + signum,
                )
                # Not KeyboardInterrupt: raised inside Bytewax's run loop it becomes a Rust
                # panic with a traceback (exit 1), and in a cluster the teardown would wait
                # forever for the other processes. Exiting drops everything like a crash;
                # recovery makes that safe (the others stop too, all resume from the snapshot).
                sys.stderr.flush()
                os._exit(128 + signum)
            self.start(name)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
