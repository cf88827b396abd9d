"""Retry delays: exponential backoff with jitter, honouring the peer's Retry-After. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    base_ms: int
    max_ms: int
    jitter: float
    max_retries: int

    def delay_s(
        self, retry: int, retry_after_s: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Delay before retry number `retry` (0-based): base × 2^retry, capped, minus jitter.

        Jitter only shortens the delay (by up to `jitter` of it), so a retry never comes later
        than the documented schedule; Retry-After is a floor, itself capped by the maximum.
        """
        exponential = min(self.base_ms * (2.0 ** min(retry, 62)), self.max_ms) / 1000
        spread: float = (rng or random).uniform(1 - self.jitter, 1.0)
        delay = exponential * spread
        if retry_after_s is not None and retry_after_s > 0:
            delay = max(delay, min(retry_after_s, self.max_ms / 1000))
        return delay

    def exhausted(self, attempts: int) -> bool:
        """After `attempts` handler calls, are the retries used up?"""
        return attempts > self.max_retries


def poll_delay_s(polls: int, base_s: float = 0.25, cap_s: float = 10.0) -> float:
    """Wait between re-checks of a busy claim or an unreachable Redis."""
    return min(base_s * 2.0 ** min(polls, 16), cap_s)
