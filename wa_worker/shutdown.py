"""Graceful drain on SIGTERM / SIGINT.

Bytewax 0.21 dies on SIGTERM without closing anything, and on SIGINT closes without a final
snapshot. Instead, the first signal starts a drain: the inbound source stops taking records,
conversations start no new work, in-flight handler calls finish (up to DRAIN_TIMEOUT_S), and
then the completion source ends too. With every input ended, Bytewax closes the last epoch:
the sink flushes, recovery snapshots (pending retries included) and the process exits 0.
A second signal aborts at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType

log = logging.getLogger(__name__)


class Drain:
    def __init__(self) -> None:
        self._started = threading.Event()
        self._deadline = float("inf")
        self.timeout_s = 30.0

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

    def expired(self) -> bool:
        return time.monotonic() >= self._deadline

    def install_signal_handlers(self, timeout_s: float, in_cluster: bool = False) -> None:
        self.timeout_s = timeout_s

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if self.draining:
                log.warning("second %s: aborting without drain", signal.Signals(signum).name)
                if in_cluster:
                    # Bytewax's teardown after an interrupt would close this process's
                    # connections cleanly and wait for the other processes to hang up, which
                    # they never do: all would hang. Exiting at once drops the connections like
                    # a crash, so the others stop too (and all resume from the last snapshot).
                    sys.stderr.flush()
                    os._exit(128 + signum)
                raise KeyboardInterrupt
            self.start(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


DRAIN = Drain()
