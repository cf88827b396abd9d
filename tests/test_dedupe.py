"""Claims, leases, attempt records and done markers on a real Redis server: standalone and
Cluster, the same code and the same answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from devtools import devstack
from devtools.dedupe_v1 import V1DedupeStore
from tests.conftest import RedisTarget, Stack
from wa_worker.core import dedupe
from wa_worker.core.dedupe import (
    AsyncDedupeStore,
    AttemptRecord,
    ClaimRequest,
    DedupeAdmin,
    DedupeKeys,
    DoneMark,
    MarkerState,
    check_dedupe_works,
)
from wa_worker.core.redis_client import AsyncRedis, SyncRedis, async_redis_client, redis_client
from wa_worker.models.completions import ClaimStatus

DAY_MS = 86_400_000
TTL_MS = 3_600_000  # an hour: what a test leaves behind goes soon
Replies = list[tuple[ClaimStatus, int, int]]


@pytest.fixture
def target(dedupe_redis: RedisTarget) -> RedisTarget:
    """The topology under test: conftest's `dedupe_redis` (standalone, cluster, Sentinel, TLS)."""
    return dedupe_redis


def _nodes(client: SyncRedis) -> list[redis.Redis]:
    if isinstance(client, redis.RedisCluster):
        primaries = client.get_primaries()
        return [client.get_redis_connection(node) for node in primaries]
    return [client]


@pytest.fixture
def sync_client(target: RedisTarget, redis_prefix: str) -> Iterator[SyncRedis]:
    client = redis_client(target.settings())
    yield client
    # The cluster is shared and outlives the run: this test's keys go with it.
    if isinstance(client, redis.RedisCluster):
        for node in _nodes(client):
            for key in node.scan_iter(match=f"{redis_prefix}*", count=1000):
                node.delete(key)
    client.close()


def _client(target: RedisTarget) -> AsyncRedis:
    return async_redis_client(target.settings())


Run = Callable[..., Replies]


@pytest.fixture
def run(target: RedisTarget, redis_prefix: str, sync_client: SyncRedis) -> Run:
    def run(
        claims: list[ClaimRequest],
        records: list[AttemptRecord] | None = None,
        dones: list[DoneMark] | None = None,
        keys: DedupeKeys | None = None,
    ) -> Replies:
        async def go() -> Replies:
            store = AsyncDedupeStore(_client(target), keys or DedupeKeys(redis_prefix, TTL_MS))
            try:
                replies = await store.run_batch(claims, records or [], dones or [])
            finally:
                await store.aclose()
            return [(r.status, r.attempts, r.wait_ms) for r in replies]

        return asyncio.run(go())

    return run


def test_claim_then_busy_then_done(run: Run, redis_prefix: str, sync_client: SyncRedis) -> None:
    keys = DedupeKeys(redis_prefix, TTL_MS)
    assert run([ClaimRequest("wamid.1", "tok-a", 5000)]) == [(ClaimStatus.CLAIMED, 0, 0)]
    # Another claimant (a redelivery, or a replay after a crash) waits for the lease.
    status, _, wait_ms = run([ClaimRequest("wamid.1", "tok-b", 5000)])[0]
    assert status is ClaimStatus.BUSY and 0 < wait_ms <= 5000
    # The holder itself (a resumed run keeps its token) gets it again.
    assert run([ClaimRequest("wamid.1", "tok-a", 5000)])[0][0] is ClaimStatus.CLAIMED
    run([], dones=[("wamid.1", "processed")])
    assert run([ClaimRequest("wamid.1", "tok-c", 5000)])[0][0] is ClaimStatus.DONE
    # Finished, the event is one field of its bucket's day hash: no token or lease kept.
    digest = keys.digest("wamid.1")
    assert not sync_client.exists(keys.claim_key(digest))
    day = keys.day_key(keys.bucket(digest), time.time_ns() // 1_000_000 // DAY_MS)
    assert sync_client.hget(day, digest) == b"p"
    # The day hash lives for the window plus the rest of its day.
    assert TTL_MS - 60_000 < sync_client.pttl(day) <= TTL_MS + DAY_MS


def test_a_crashed_claim_is_taken_over_after_its_lease_with_its_attempts(run: Run) -> None:
    run([ClaimRequest("wamid.2", "crashed", 300)])
    run([], [AttemptRecord("wamid.2", "crashed", 2, 300)])
    time.sleep(0.4)
    assert run([ClaimRequest("wamid.2", "new", 5000)]) == [(ClaimStatus.CLAIMED, 2, 0)]


def test_only_the_holder_records_attempts(run: Run) -> None:
    run([ClaimRequest("wamid.3", "holder", 300)])
    run([], [AttemptRecord("wamid.3", "intruder", 9, 300)])
    time.sleep(0.4)
    assert run([ClaimRequest("wamid.3", "next", 5000)]) == [(ClaimStatus.CLAIMED, 0, 0)]


def _reads(client: SyncRedis) -> int:
    return sum(int(node.info("stats")["total_reads_processed"]) for node in _nodes(client))


def test_a_batch_is_one_round_trip_per_node_with_replies_in_order(
    run: Run, target: RedisTarget, redis_prefix: str, sync_client: SyncRedis
) -> None:
    claims = [ClaimRequest(f"wamid.b{i}", "t", 5000) for i in range(500)]

    async def measured() -> tuple[Replies, int]:
        store = AsyncDedupeStore(_client(target), DedupeKeys(redis_prefix, TTL_MS))
        try:
            await store.run_batch([ClaimRequest("warm-up", "t", 5000)])  # connections, scripts
            before = _reads(sync_client)
            replies = await store.run_batch(claims)
            reads = _reads(sync_client) - before
            return [(r.status, r.attempts, r.wait_ms) for r in replies], reads
        finally:
            await store.aclose()

    replies, reads = asyncio.run(measured())
    assert [r[0] for r in replies] == [ClaimStatus.CLAIMED] * 500
    # Socket reads on the servers: a pipeline arrives in a few per node; one round trip per
    # event or per bucket would be hundreds or dozens. Shared servers' other clients add some.
    assert reads < 10 * len(_nodes(sync_client)), reads
    run([], dones=[(c.event_key, "processed") for c in claims[:250]])
    again = run([ClaimRequest(c.event_key, "u", 5000) for c in claims])
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

    with pytest.raises(redis.RedisError):
        asyncio.run(run())


def test_redrive_reset_clears_only_dead_lettered_markers(
    run: Run, redis_prefix: str, sync_client: SyncRedis
) -> None:
    run(
        [ClaimRequest(k, "t", 5000) for k in ("wamid.d", "wamid.p", "wamid.c")],
        dones=[("wamid.d", "dlq"), ("wamid.p", "processed")],
    )
    admin = DedupeAdmin(sync_client, DedupeKeys(redis_prefix, TTL_MS))
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
    replies = run([ClaimRequest(k, "t2", 5000) for k in keys[:3]])
    assert [r[0] for r in replies] == [ClaimStatus.CLAIMED, ClaimStatus.DONE, ClaimStatus.BUSY]
    assert admin.reset_dead_lettered(["wamid.d"])["wamid.d"] is MarkerState.IN_FLIGHT


def test_batches_larger_than_one_script_call_keep_their_order(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dedupe, "_SCRIPT_BATCH", 7)  # many calls per bucket, as a backlog makes
    keys = [f"big-{i}" for i in range(600)]
    run([], dones=[(k, "processed") for k in keys[::2]])
    replies = run([ClaimRequest(k, "t", 1_000) for k in keys])
    assert [status for status, _, _ in replies] == [
        ClaimStatus.DONE if i % 2 == 0 else ClaimStatus.CLAIMED for i in range(600)
    ]


def test_an_event_stays_done_for_the_window_then_may_be_processed_again(
    run: Run, redis_prefix: str
) -> None:
    # 1.5 s "days" and window: done for at least the window, at most window + a day. Each
    # call opens a new connection (a TLS handshake, a cluster's discovery): the first check
    # leaves a second of margin for it on a loaded machine.
    keys = DedupeKeys(redis_prefix, 1500, period_ms=1500)
    run([], dones=[("wamid.w", "processed")], keys=keys)
    finished = time.monotonic()
    time.sleep(0.5)
    assert run([ClaimRequest("wamid.w", "a", 5000)], keys=keys)[0][0] is ClaimStatus.DONE
    time.sleep(max(0.0, finished + 3.1 - time.monotonic()))
    assert run([ClaimRequest("wamid.w", "b", 5000)], keys=keys)[0][0] is ClaimStatus.CLAIMED


def test_the_start_up_check_claims_through_the_layout(
    sync_client: SyncRedis, redis_prefix: str
) -> None:
    check_dedupe_works(sync_client, DedupeKeys(redis_prefix, TTL_MS))


# Upgrade: markers written by v1 (the layout before issue 13, standalone Redis only).


def _v1(
    stack: Stack,
    prefix: str,
    claims: list[ClaimRequest],
    records: Sequence[tuple[str, str, int, int]] = (),
    dones: Sequence[DoneMark] = (),
) -> None:
    async def go() -> None:
        store = V1DedupeStore(aioredis.from_url(stack.redis_url), prefix, TTL_MS)
        try:
            await store.run_batch(claims, records, dones)
        finally:
            await store.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("dedupe_redis", ["standalone"], indirect=True)
def test_v2_sees_the_markers_v1_wrote(
    stack: Stack, run: Run, redis_prefix: str, sync_client: SyncRedis
) -> None:
    events = ["v.done", "v.dlq", "v.live", "v.crashed"]
    _v1(
        stack,
        redis_prefix,
        [ClaimRequest(k, "old", 300 if k == "v.crashed" else 60_000) for k in events],
        records=[("v.crashed", "old", 2, 300)],
        dones=[("v.done", "processed"), ("v.dlq", "dlq")],
    )
    time.sleep(0.4)
    replies = run([ClaimRequest(k, "new", 5000) for k in events])
    assert [r[0] for r in replies] == [
        ClaimStatus.DONE,
        ClaimStatus.DONE,
        ClaimStatus.BUSY,  # a v1 worker still holds it
        ClaimStatus.CLAIMED,
    ]
    assert replies[3][1] == 2  # the crashed v1 run's attempts, carried into v2
    keys = DedupeKeys(redis_prefix, TTL_MS)
    assert not sync_client.exists(keys.v1_key("v.crashed"))  # moved, not left to mislead
    admin = DedupeAdmin(sync_client, keys)
    assert admin.reset_dead_lettered(events[:3]) == {
        "v.done": MarkerState.PROCESSED,
        "v.dlq": MarkerState.DEAD_LETTERED,
        "v.live": MarkerState.IN_FLIGHT,
    }
    assert run([ClaimRequest("v.dlq", "new", 5000)])[0][0] is ClaimStatus.CLAIMED


@pytest.mark.parametrize("dedupe_redis", ["standalone"], indirect=True)
def test_v1_markers_are_read_only_for_one_window_after_the_upgrade(
    stack: Stack, run: Run, redis_prefix: str, sync_client: SyncRedis
) -> None:
    _v1(stack, redis_prefix, [ClaimRequest("v.old", "old", 5000)], dones=[("v.old", "dlq")])
    keys = DedupeKeys(redis_prefix, TTL_MS)
    # The first v2 worker ran more than a window ago: no v1 marker can be alive any more.
    sync_client.set(keys.v2_since_key(), time.time_ns() // 1_000_000 - TTL_MS - 1)
    assert run([ClaimRequest("v.old", "new", 5000)])[0][0] is ClaimStatus.CLAIMED


def test_a_server_without_the_scripts_is_given_them_by_the_batch(tmp_path: Path) -> None:
    """A fresh, failed-over or resharded node answers NOSCRIPT: those calls go again as EVAL."""
    service = devstack.Service("redis", "redis-server", tmp_path)
    url = f"redis://127.0.0.1:{devstack.start_redis(0, service=service)}/0"
    admin = redis.Redis.from_url(url)

    async def claims(token: str) -> list[ClaimStatus]:
        store = AsyncDedupeStore(aioredis.from_url(url), DedupeKeys("x:", TTL_MS))
        try:
            replies = await store.run_batch([ClaimRequest(f"e{i}", token, 5000) for i in range(50)])
        finally:
            await store.aclose()
        return [r.status for r in replies]

    try:
        assert asyncio.run(claims("a")) == [ClaimStatus.CLAIMED] * 50
        admin.script_flush()
        assert asyncio.run(claims("b")) == [ClaimStatus.BUSY] * 50
        assert admin.script_exists(dedupe.CLAIM.sha) == [True]
    finally:
        admin.close()
        service.stop()


@pytest.mark.parametrize(
    "event_key",
    [
        "wamid.A",
        "wamid.A:sent",
        "wamid.A:read",
        "wamid.A:failed",
        "standby:wamid.B:delivered",
        "wamid.C:deleted",
        "change:x:1",
        ":sent",
    ],
)
def test_derived_message_keys_are_the_layouts_own(event_key: str) -> None:
    """A status's digest and bucket come from the per-message cache: the same as derived
    from its own key and its message id, as the layout defines them."""
    from wa_worker.core.status_order import status_of

    keys = dedupe.DedupeKeys("wa:", 86_400_000)
    digest = keys.digest(event_key)
    status = status_of(event_key)
    bucket = keys.bucket(keys.digest(status.message_id) if status else digest)
    assert keys.place(event_key) == (digest, bucket)
    assert keys.place(event_key) == (digest, bucket)  # from the cache, the second time
    if status is not None:
        message = keys.message(status.message_id)
        assert message.claim_keys[status.rank] == keys.claim_key(digest, bucket)
