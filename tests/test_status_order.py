"""Statuses that never go backwards (issue 15 item 3): per message id, the highest status so
far, read and raised by the status's own claim, on every Redis topology, in memory, and
through a real worker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from devtools.kafka import produce, read_topic
from devtools.webhooks import envelope, messages_value, payload, status
from devtools.worker import WorkerProcess
from tests.conftest import DEDUPE_TOPOLOGIES, RedisTarget, Stack, Topics
from tests.support.cli import run_cli
from wa_worker.core.dedupe import (
    AsyncDedupeStore,
    ClaimReply,
    ClaimRequest,
    DedupeKeys,
    DedupeStore,
    plan_claims,
)
from wa_worker.core.memory_dedupe import MemoryDedupeStore
from wa_worker.core.redis_client import async_redis_client, redis_client
from wa_worker.core.status_order import StatusOrder, order, status_of
from wa_worker.errors import ConfigError
from wa_worker.models.completions import ClaimStatus
from wa_worker.settings import load_settings

TTL_MS = 3_600_000
DAY_MS = 86_400_000
Claim = Callable[..., list[ClaimReply]]


def _place(event_key: str, reply: ClaimReply) -> StatusOrder:
    own = status_of(event_key)
    assert own is not None and reply.status is ClaimStatus.CLAIMED, (event_key, reply)
    return order(own, reply.prior_rank)


@pytest.fixture(params=["memory", *DEDUPE_TOPOLOGIES])
def claim(
    request: pytest.FixtureRequest, stack: Stack, redis_prefix: str
) -> Iterator[Callable[..., list[ClaimReply]]]:
    """Claims through a store: in memory, or Redis on each of conftest's `dedupe_redis`."""
    memory = MemoryDedupeStore(TTL_MS)
    target: RedisTarget | None = None
    name: str = request.param
    if name == "standalone":
        target = RedisTarget(name, {"REDIS_URL": stack.redis_url})
    elif name == "cluster":
        url = request.getfixturevalue("redis_cluster_url")
        target = RedisTarget(name, {"REDIS_URL": url, "REDIS_MODE": "cluster"})
    elif name != "memory":
        target = RedisTarget(name, request.getfixturevalue(f"redis_{name}_env"))

    def run(*event_keys: str, token: str = "t") -> list[ClaimReply]:
        async def go() -> list[ClaimReply]:
            store: DedupeStore = memory
            if target is not None:
                store = AsyncDedupeStore(
                    async_redis_client(target.settings()), DedupeKeys(redis_prefix, TTL_MS)
                )
            try:
                return await store.run_batch([ClaimRequest(k, token, 5000) for k in event_keys])
            finally:
                if target is not None:
                    await store.aclose()

        return asyncio.run(go())

    yield run
    if target is not None:  # the cluster is shared and outlives the run: these keys go
        client = redis_client(target.settings())
        nodes = (
            [client.get_redis_connection(n) for n in client.get_primaries()]
            if isinstance(client, redis.RedisCluster)
            else [client]
        )
        for node in nodes:
            for key in node.scan_iter(match=f"{redis_prefix}*", count=1000):
                node.delete(key)
        client.close()


def test_a_late_delivered_after_read_is_superseded(claim: Claim) -> None:
    keys = ["wamid.A:sent", "wamid.A:read", "wamid.A:delivered"]
    places = [_place(k, claim(k)[0]) for k in keys]
    assert places == [
        StatusOrder("sent", False),
        StatusOrder("read", False),
        StatusOrder("read", True),  # delivered came after read: superseded, current read
    ]


def test_in_order_statuses_are_not_superseded_and_other_messages_are_apart(claim: Claim) -> None:
    # One batch: the script sees the batch's earlier statuses of the same message too.
    replies = claim("wamid.B:delivered", "wamid.B:read", "wamid.C:sent", "wamid.B:sent")
    assert _place("wamid.B:delivered", replies[0]) == StatusOrder("delivered", False)
    assert _place("wamid.B:read", replies[1]) == StatusOrder("read", False)
    assert _place("wamid.C:sent", replies[2]) == StatusOrder("sent", False)
    assert _place("wamid.B:sent", replies[3]) == StatusOrder("read", True)


def test_a_redelivered_status_is_not_superseded_by_its_own_claim(claim: Claim) -> None:
    # Claimed, then crashed before done: the copy redelivered (another claimant, after the
    # lease; or the same run resumed) finds its own rank, which does not supersede it.
    claim("wamid.D:delivered", "wamid.D:read", token="crashed")
    (again,) = claim("wamid.D:read", token="crashed")
    assert _place("wamid.D:read", again) == StatusOrder("read", False)
    # `failed` is final for the attempt: anything after it is superseded.
    assert _place("wamid.D:failed", claim("wamid.D:failed")[0]) == StatusOrder("failed", False)
    assert _place("wamid.D:played", claim("wamid.D:played")[0]) == StatusOrder("failed", True)


def test_a_message_and_a_status_not_ranked_take_no_part(claim: Claim) -> None:
    claim("wamid.E:read")
    message, unranked = claim("wamid.E", "wamid.E:deleted")
    assert (message.status, message.prior_rank) == (ClaimStatus.CLAIMED, 0)
    assert (unranked.status, unranked.prior_rank) == (ClaimStatus.CLAIMED, 0)
    assert status_of("wamid.E") is None and status_of("wamid.E:deleted") is None


def test_all_statuses_of_a_message_are_one_script_call_and_their_order_costs_no_key(
    dedupe_redis: RedisTarget, redis_prefix: str
) -> None:
    keys = DedupeKeys(redis_prefix, TTL_MS)
    statuses = [f"wamid.F:{s}" for s in ("sent", "delivered", "read", "played", "failed")]
    planned = plan_claims(keys, [ClaimRequest(k, "t", 5000) for k in statuses], 0, False)
    assert len(planned) == 1  # one bucket: one call, claims and their lookups in one slot
    read = ClaimRequest("wamid.F:read", "t", 5000)

    async def go() -> ClaimReply:
        store = AsyncDedupeStore(async_redis_client(dedupe_redis.settings()), keys)
        try:
            await store.run_batch([read], dones=[])
            await store.run_batch([], dones=[("wamid.F:read", "processed")])
            return (await store.run_batch([ClaimRequest("wamid.F:sent", "t", 5000)]))[0]
        finally:
            await store.aclose()

    assert _place("wamid.F:sent", asyncio.run(go())) == StatusOrder("read", True)
    client = redis_client(dedupe_redis.settings())
    try:
        bucket = keys.bucket(keys.digest("wamid.F"))  # the message id's bucket
        day = keys.day_key(bucket, time.time_ns() // 1_000_000 // DAY_MS)
        # The read's done marker is all the message's order needs: no field beside it.
        assert client.hget(day, keys.digest("wamid.F:read")) == b"p"
        assert client.hlen(day) == 2, client.hkeys(day)  # the first field ('~') and that one
        sent = keys.claim_key(keys.digest("wamid.F:sent"), bucket)
        assert client.exists(sent)
        client.delete(day, sent)
    finally:
        client.close()


def test_status_superseded_is_validated_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATUS_SUPERSEDED", "drop")
    with pytest.raises(ConfigError, match="STATUS_SUPERSEDED: Input should be 'deliver' or 'skip'"):
        load_settings()


# A real worker on the real broker.


def _statuses_out_of_order(webhook_id: str) -> bytes:
    """sent, read, then a late delivered: one message, one webhook, in that order."""
    value = messages_value(
        statuses=[status("wamid.so.1", "31620000", s) for s in ("sent", "read", "delivered")]
    )
    return envelope(webhook_id, payload(value))


@pytest.mark.parametrize("mode", ["deliver", "skip"])
def test_a_worker_flags_a_late_status_and_skips_it_when_asked(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess], mode: str
) -> None:
    produce(stack.brokers, topics.inbound, [(b"w-so", _statuses_out_of_order("w-so"))])
    worker = start_worker(
        HANDLER_CALLABLE="tests.support.result_handlers:status_order",
        STATUS_SUPERSEDED=mode,
        REORDER_WINDOW_MS="0",  # in arrival order: the late one is late
    )
    processed = read_topic(
        stack.brokers, topics.processed, until=lambda rs: len(rs) >= 3, timeout_s=90
    )
    assert worker.running(), worker.log()
    records = {json.loads(r.value)["event_key"]: json.loads(r.value) for r in processed}
    assert len(processed) == 3 and set(records) == {
        "wamid.so.1:sent",
        "wamid.so.1:read",
        "wamid.so.1:delivered",
    }
    seen = {
        k: (r["current_status"], r["superseded"], r["event"]["superseded"], r["skipped"])
        for k, r in records.items()
    }
    assert seen == {
        "wamid.so.1:sent": ("sent", False, False, None),
        "wamid.so.1:read": ("read", False, False, None),
        "wamid.so.1:delivered": ("read", True, True, "superseded" if mode == "skip" else None),
    }
    # The handler saw both in its event; with skip it was not called for the late one.
    assert records["wamid.so.1:read"]["result"] == {"current_status": "read", "superseded": False}
    late = records["wamid.so.1:delivered"]
    if mode == "skip":
        assert late["result"] is None and late["attempts"] == 0
    else:
        assert late["result"] == {"current_status": "read", "superseded": True}


def test_replay_in_memory_keeps_the_order_and_skips(stack: Stack, tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(_statuses_out_of_order("w-so-replay") + b"\n")
    env = {
        "REDIS_URL": stack.redis_url,
        "KAFKA_BROKERS": "127.0.0.1:9",  # no Kafka needed
        "HANDLER_CALLABLE": "tests.support.result_handlers:status_order",
        "STATUS_SUPERSEDED": "skip",
        "REORDER_WINDOW_MS": "0",
    }
    out = tmp_path / "out"
    run_cli(env, "replay", str(capture), "-o", str(out), "--in-memory", module="wa_worker")
    lines = (out / "processed.jsonl").read_text().splitlines()
    records = [json.loads(json.loads(line)["value"]) for line in lines]
    seen = {r["event_key"]: (r["current_status"], r["superseded"], r["result"]) for r in records}
    assert seen == {
        "wamid.so.1:sent": ("sent", False, {"current_status": "sent", "superseded": False}),
        "wamid.so.1:read": ("read", False, {"current_status": "read", "superseded": False}),
        "wamid.so.1:delivered": ("read", True, None),  # skipped: no handler call
    }
