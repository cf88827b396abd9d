"""Claims, leases, attempt records and done markers on a real Redis server, in each topology
the worker supports (`dedupe_redis`: standalone, Sentinel, TLS with an ACL user, ...)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from tests.conftest import RedisTarget
from wa_worker.core.dedupe import (
    AsyncDedupeStore,
    AttemptRecord,
    ClaimRequest,
    DedupeAdmin,
    DedupeKeys,
    DoneMark,
    MarkerState,
    redis_store,
)
from wa_worker.core.redis_client import SyncRedis
from wa_worker.core.redis_client import redis_client as make_redis_client
from wa_worker.models.completions import ClaimStatus

DAY_MS = 86_400_000


@pytest.fixture
def redis_client(dedupe_redis: RedisTarget) -> Iterator[SyncRedis]:
    """A client of the topology under test (replaces conftest's standalone one here)."""
    client = make_redis_client(dedupe_redis.settings())
    yield client
    client.close()


def _claims(
    target: RedisTarget,
    prefix: str,
    claims: list[ClaimRequest],
    records: list[AttemptRecord] | None = None,
    dones: list[DoneMark] | None = None,
) -> list[tuple[ClaimStatus, int, int]]:
    async def run() -> list[tuple[ClaimStatus, int, int]]:
        store = redis_store(target.settings(redis_key_prefix=prefix, dedupe_ttl_days=1))
        try:
            replies = await store.run_batch(claims, records or [], dones or [])
        finally:
            await store.aclose()
        return [(r.status, r.attempts, r.wait_ms) for r in replies]

    return asyncio.run(run())


def test_claim_then_busy_then_done(
    dedupe_redis: RedisTarget, redis_prefix: str, redis_client: SyncRedis
) -> None:
    keys = DedupeKeys(redis_prefix, DAY_MS)
    first = _claims(dedupe_redis, redis_prefix, [ClaimRequest("wamid.1", "tok-a", 5000)])
    assert first == [(ClaimStatus.CLAIMED, 0, 0)]
    # Another claimant (a redelivery, or a replay after a crash) waits for the lease.
    status, _, wait_ms = _claims(
        dedupe_redis, redis_prefix, [ClaimRequest("wamid.1", "tok-b", 5000)]
    )[0]
    assert status is ClaimStatus.BUSY and 0 < wait_ms <= 5000
    # The holder itself (a resumed run keeps its token) gets it again.
    assert _claims(dedupe_redis, redis_prefix, [ClaimRequest("wamid.1", "tok-a", 5000)])[0][0] is (
        ClaimStatus.CLAIMED
    )
    _claims(dedupe_redis, redis_prefix, [], dones=[("wamid.1", "processed")])
    assert _claims(dedupe_redis, redis_prefix, [ClaimRequest("wamid.1", "tok-c", 5000)])[0][0] is (
        ClaimStatus.DONE
    )
    ttl = redis_client.pttl(keys.key("wamid.1"))
    assert DAY_MS - 60_000 < ttl <= DAY_MS


def test_a_crashed_claim_is_taken_over_after_its_lease_with_its_attempts(
    dedupe_redis: RedisTarget, redis_prefix: str
) -> None:
    _claims(dedupe_redis, redis_prefix, [ClaimRequest("wamid.2", "crashed", 300)])
    _claims(dedupe_redis, redis_prefix, [], [AttemptRecord("wamid.2", "crashed", 2, 300)])
    time.sleep(0.4)
    assert _claims(dedupe_redis, redis_prefix, [ClaimRequest("wamid.2", "new", 5000)]) == [
        (ClaimStatus.CLAIMED, 2, 0)
    ]


def test_only_the_holder_records_attempts(
    dedupe_redis: RedisTarget, redis_prefix: str, redis_client: SyncRedis
) -> None:
    _claims(dedupe_redis, redis_prefix, [ClaimRequest("wamid.3", "holder", 5000)])
    _claims(dedupe_redis, redis_prefix, [], [AttemptRecord("wamid.3", "intruder", 9, 5000)])
    key = DedupeKeys(redis_prefix, DAY_MS).key("wamid.3")
    assert redis_client.hget(key, "attempts") == b"0"


def test_a_batch_is_one_round_trip_with_replies_in_order(
    dedupe_redis: RedisTarget, redis_prefix: str, redis_client: SyncRedis
) -> None:
    before = int(redis_client.info("stats")["total_reads_processed"])
    claims = [ClaimRequest(f"wamid.b{i}", "t", 5000) for i in range(500)]
    replies = _claims(dedupe_redis, redis_prefix, claims)
    assert [r[0] for r in replies] == [ClaimStatus.CLAIMED] * 500
    # Socket reads on the server: a pipeline arrives in a few; 500 round trips would be 500.
    reads = int(redis_client.info("stats")["total_reads_processed"]) - before
    assert reads < 30, reads
    _claims(
        dedupe_redis, redis_prefix, [], dones=[(c.event_key, "processed") for c in claims[:250]]
    )
    again = _claims(
        dedupe_redis, redis_prefix, [ClaimRequest(c.event_key, "u", 5000) for c in claims]
    )
    assert [r[0] for r in again] == [ClaimStatus.DONE] * 250 + [ClaimStatus.BUSY] * 250


def test_unreachable_redis_raises_for_the_batch() -> None:
    async def run() -> None:
        store = AsyncDedupeStore(
            aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2),
            DedupeKeys("x:", DAY_MS),
        )
        try:
            await store.run_batch([ClaimRequest("k", "t", 1000)], [])
        finally:
            await store.aclose()

    try:
        asyncio.run(run())
    except redis.RedisError:
        return
    raise AssertionError("expected a RedisError")


def test_redrive_reset_clears_only_dead_lettered_markers(
    dedupe_redis: RedisTarget, redis_prefix: str, redis_client: SyncRedis
) -> None:
    _claims(
        dedupe_redis,
        redis_prefix,
        [ClaimRequest(k, "t", 5000) for k in ("wamid.d", "wamid.p", "wamid.c")],
        dones=[("wamid.d", "dlq"), ("wamid.p", "processed")],
    )
    admin = DedupeAdmin(redis_client, DedupeKeys(redis_prefix, DAY_MS))
    keys = ["wamid.d", "wamid.p", "wamid.c", "wamid.new"]
    expected = {
        "wamid.d": MarkerState.DEAD_LETTERED,
        "wamid.p": MarkerState.PROCESSED,
        "wamid.c": MarkerState.IN_FLIGHT,
        "wamid.new": MarkerState.ABSENT,
    }
    assert admin.reset_dead_lettered(keys, dry_run=True) == expected
    assert admin.reset_dead_lettered(keys) == expected
    # Only the dead-lettered event may be claimed again, with a fresh attempt budget.
    replies = _claims(dedupe_redis, redis_prefix, [ClaimRequest(k, "t2", 5000) for k in keys[:3]])
    assert [r[0] for r in replies] == [ClaimStatus.CLAIMED, ClaimStatus.DONE, ClaimStatus.BUSY]
    assert admin.reset_dead_lettered(["wamid.d"])["wamid.d"] is MarkerState.IN_FLIGHT


def test_batches_larger_than_one_script_call_keep_their_order(
    dedupe_redis: RedisTarget, redis_prefix: str
) -> None:
    keys = [f"big-{i}" for i in range(2_500)]
    _claims(dedupe_redis, redis_prefix, [], dones=[(k, "processed") for k in keys[::2]])
    replies = _claims(dedupe_redis, redis_prefix, [ClaimRequest(k, "t", 1_000) for k in keys])
    assert [status for status, _, _ in replies] == [
        ClaimStatus.DONE if i % 2 == 0 else ClaimStatus.CLAIMED for i in range(2_500)
    ]
