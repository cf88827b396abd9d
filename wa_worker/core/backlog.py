"""How many events this process has taken from Kafka and not finished: input waits above a limit.

Without it the Kafka source reads as fast as the broker serves, so a backlog (a restart after
an outage, a slow handler) would pile up in the conversations' queues until memory runs out.
"""

from __future__ import annotations

import threading


class Backlog:
    def __init__(self, limit: int = 0) -> None:
        self._limit = limit  # 0: unlimited
        self._count = 0
        self._lock = threading.Lock()  # the process's Bytewax workers are threads

    def configure(self, limit: int) -> None:
        self._limit = limit

    def add(self, count: int = 1) -> None:
        with self._lock:
            self._count += count

    def done(self, count: int = 1) -> None:
        self.add(-count)

    def full(self) -> bool:
        return 0 < self._limit <= self._count

    @property
    def count(self) -> int:
        return self._count
