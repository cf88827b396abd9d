"""The in-process dedupe store answers like the Redis one: the same script, both stores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from tests.conftest import Stack
from wa_worker.core.dedupe import (
    AsyncDedupeStore,
    AttemptRecord,
    ClaimRequest,
    DedupeKeys,
    DedupeStore,
    DoneMark,
)
from wa_worker.core.memory_dedupe import MemoryDedupeStore
from wa_worker.models.completions import ClaimStatus

DAY_MS = 86_400_000
Run = Callable[..., list[tuple[ClaimStatus, int, int]]]


@pytest.fixture(params=["redis", "memory"])
def run_batch(request: pytest.FixtureRequest, stack: Stack, redis_prefix: str) -> Run:
    memory = MemoryDedupeStore(DAY_MS)

    def run(
        claims: list[ClaimRequest],
        records: list[AttemptRecord] | None = None,
        dones: list[DoneMark] | None = None,
    ) -> list[tuple[ClaimStatus, int, int]]:
        async def go() -> list[tuple[ClaimStatus, int, int]]:
            store: DedupeStore = memory
            if request.param == "redis":
                client = aioredis.from_url(stack.redis_url)
                store = AsyncDedupeStore(client, DedupeKeys(redis_prefix, DAY_MS))
            try:
                replies = await store.run_batch(claims, records or [], dones or [])
            finally:
                if request.param == "redis":
                    await store.aclose()
            return [(r.status, r.attempts, r.wait_ms) for r in replies]

        return asyncio.run(go())

    return run


def test_claim_busy_holder_done(run_batch: Run) -> None:
    assert run_batch([ClaimRequest("e1", "a", 5000)]) == [(ClaimStatus.CLAIMED, 0, 0)]
    status, _, wait_ms = run_batch([ClaimRequest("e1", "b", 5000)])[0]
    assert status is ClaimStatus.BUSY and 0 < wait_ms <= 5000
    assert run_batch([ClaimRequest("e1", "a", 5000)])[0][0] is ClaimStatus.CLAIMED
    run_batch([], dones=[("e1", "processed")])
    assert run_batch([ClaimRequest("e1", "c", 5000)])[0][0] is ClaimStatus.DONE


def test_lease_expiry_takes_over_with_the_recorded_attempts(run_batch: Run) -> None:
    run_batch([ClaimRequest("e2", "crashed", 300)])
    run_batch([], [AttemptRecord("e2", "crashed", 2, 300)])
    run_batch([], [AttemptRecord("e2", "intruder", 9, 300)])  # not the holder: ignored
    time.sleep(0.4)
    assert run_batch([ClaimRequest("e2", "new", 5000)]) == [(ClaimStatus.CLAIMED, 2, 0)]


def test_one_batch_marks_done_and_records_attempts_before_it_claims(run_batch: Run) -> None:
    # The first copy's lease ran out while its done marker waited (a Redis outage): the
    # redelivered copy claimed in the same batch must find it done, not free.
    run_batch([ClaimRequest("e3", "first", 300)])
    time.sleep(0.4)
    replies = run_batch([ClaimRequest("e3", "copy", 5000)], dones=[("e3", "dlq")])
    assert [r[0] for r in replies] == [ClaimStatus.DONE]
    # A lease extended in the same batch holds against a copy's claim.
    run_batch([ClaimRequest("e4", "first", 300)])
    time.sleep(0.4)
    replies = run_batch([ClaimRequest("e4", "copy", 5000)], [AttemptRecord("e4", "first", 1, 5000)])
    assert replies[0][0] is ClaimStatus.BUSY


def test_memory_entries_expire_after_the_dedupe_window() -> None:
    now = [0.0]
    store = MemoryDedupeStore(1000, clock_ms=lambda: now[0])
    asyncio.run(store.run_batch([], dones=[("e4", "processed")]))
    now[0] = 999
    assert asyncio.run(store.run_batch([ClaimRequest("e4", "t", 10)]))[0].status is (
        ClaimStatus.DONE
    )
    now[0] = 1000
    assert asyncio.run(store.run_batch([ClaimRequest("e4", "t", 10)]))[0].status is (
        ClaimStatus.CLAIMED
    )
