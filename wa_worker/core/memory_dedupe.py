"""The dedupe store in process memory, for offline replays when Redis is not reachable.

Same interface and semantics as the Redis store (`wa_worker.core.dedupe`): a claim with a lease
before the handler, attempts recorded with the claim, a done marker after the outcome is
written, all kept for the dedupe window, and a status's claim answers the highest status of
its message with a marker (core/status_order.py). What it cannot give is memory across
processes: duplicates are recognised within one run only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from wa_worker.core.dedupe import AttemptRecord, ClaimReply, ClaimRequest, DoneMark, dedupe_keys
from wa_worker.core.status_order import above, status_of
from wa_worker.models.completions import ClaimStatus
from wa_worker.settings import Settings


@dataclass(slots=True)
class _Entry:
    state: str  # "claim" or "done"
    token: str
    attempts: int
    lease_until_ms: float
    expires_at_ms: float
    outcome: str | None = None


class MemoryDedupeStore:
    def __init__(self, ttl_ms: int, clock_ms: Callable[[], float] | None = None) -> None:
        self._ttl_ms = ttl_ms
        self._now_ms = clock_ms or (lambda: time.monotonic() * 1000)
        self._entries: dict[str, _Entry] = {}

    async def run_batch(
        self,
        claims: Sequence[ClaimRequest],
        records: Sequence[AttemptRecord] = (),
        dones: Sequence[DoneMark] = (),
    ) -> list[ClaimReply]:
        """In the Redis pipeline's order: attempt records, done markers, then claims."""
        now = self._now_ms()
        for r in records:
            entry = self._live(r.event_key, now)
            if entry is not None and entry.state == "claim" and entry.token == r.token:
                entry.attempts = r.attempts
                entry.lease_until_ms = now + r.lease_ms
        for event_key, outcome in dones:
            entry = self._live(event_key, now)
            if entry is None:
                entry = self._entries[event_key] = _Entry("done", "", 0, 0, 0)
            entry.state, entry.outcome = "done", outcome
            entry.expires_at_ms = now + self._ttl_ms
        return [self._claim(c, now) for c in claims]

    async def aclose(self) -> None:
        self._entries.clear()

    def _claim(self, request: ClaimRequest, now: float) -> ClaimReply:
        entry = self._live(request.event_key, now)
        attempts = entry.attempts if entry else 0
        if entry is not None and entry.state == "done":
            return ClaimReply(ClaimStatus.DONE, attempts, 0)
        if (
            entry is not None
            and entry.state == "claim"
            and entry.token != request.token
            and entry.lease_until_ms > now
        ):
            return ClaimReply(ClaimStatus.BUSY, attempts, int(entry.lease_until_ms - now))
        self._entries[request.event_key] = _Entry(
            "claim", request.token, attempts, now + request.lease_ms, now + self._ttl_ms
        )
        higher = self._higher_seen(request.event_key, now)
        return ClaimReply(ClaimStatus.CLAIMED, attempts, 0, higher)

    def _higher_seen(self, event_key: str, now: float) -> int:
        """A status: the highest status above it of its message with a marker, else 0."""
        status = status_of(event_key)
        if status is None:
            return 0
        return next((r for r, k in above(status) if self._live(k, now) is not None), 0)

    def _live(self, event_key: str, now: float) -> _Entry | None:
        entry = self._entries.get(event_key)
        if entry is not None and entry.expires_at_ms <= now:
            del self._entries[event_key]
            return None
        return entry


def memory_store(settings: Settings) -> MemoryDedupeStore:
    return MemoryDedupeStore(dedupe_keys(settings).ttl_ms)
