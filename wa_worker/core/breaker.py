"""A circuit breaker for the handler.

When almost all recent handler calls failed transiently (the handler is down), retrying every
event until its budget runs out would only fill the DLQ. While the breaker is open the worker
stops taking input and starts no handler calls, except one trial call every probe interval; the
first trial that succeeds closes it. Permanent failures (4xx) mean the handler is up: they count
as answers, not failures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from wa_worker.core import metrics
from wa_worker.settings import Settings

log = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(
        self,
        window: int = 20,
        failure_ratio: float = 0.9,
        min_calls: int = 10,
        probe_interval_s: float = 5.0,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.configure(window, failure_ratio, min_calls, probe_interval_s, enabled)
        self._clock = clock
        self._lock = threading.Lock()
        self._open = False
        self._next_trial_at = 0.0
        self._trial_in_flight = False

    def configure(
        self,
        window: int,
        failure_ratio: float,
        min_calls: int,
        probe_interval_s: float,
        enabled: bool,
    ) -> None:
        self._recent: deque[bool] = deque(maxlen=window)
        self._failure_ratio = failure_ratio
        self._min_calls = min_calls
        self._probe_interval_s = probe_interval_s
        self._enabled = enabled

    def configure_from(self, settings: Settings) -> None:
        self.configure(
            settings.breaker_window,
            settings.breaker_failure_ratio,
            settings.breaker_min_calls,
            settings.breaker_probe_interval_ms / 1000,
            settings.breaker_enabled,
        )

    def is_open(self) -> bool:
        return self._open

    def reason(self) -> str | None:
        if not self._open:
            return None
        return (
            f"handler circuit open: at least {self._failure_ratio:.0%} of the last "
            f"{len(self._recent)} calls failed; input paused, probing the handler"
        )

    def admit_call(self) -> bool:
        """May a handler call start now? While open: one trial per probe interval."""
        if not self._open:
            return True
        with self._lock:
            if self._trial_in_flight or self._clock() < self._next_trial_at:
                return False
            self._trial_in_flight = True
            return True

    def record(self, answered: bool) -> None:
        """After each call: `answered` is False for transient failures (down, 5xx, timeout)."""
        if not self._enabled:
            return
        with self._lock:
            if self._open:
                self._trial_in_flight = False
                if answered:
                    self._close()
                else:
                    self._next_trial_at = self._clock() + self._probe_interval_s
                return
            self._recent.append(answered)
            failures = self._recent.count(False)
            if len(self._recent) >= self._min_calls and (
                failures >= self._failure_ratio * len(self._recent)
            ):
                self._open = True
                self._next_trial_at = self._clock() + self._probe_interval_s
                metrics.BREAKER_OPEN.set(1)
                log.warning(
                    "handler circuit opened: %d of the last %d calls failed",
                    failures,
                    len(self._recent),
                )

    def _close(self) -> None:
        self._open = False
        self._recent.clear()
        metrics.BREAKER_OPEN.set(0)
        log.warning("handler circuit closed: the handler answers again")
