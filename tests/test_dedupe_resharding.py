"""A bucket's slot moved to another primary mid-run (resharding): the store's batches follow
ASK while the slot migrates and MOVED once it moved, with the markers' answers unchanged."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot

from wa_worker.core.dedupe import AsyncDedupeStore, ClaimRequest, DedupeKeys
from wa_worker.core.redis_client import async_redis_client
from wa_worker.models.completions import ClaimStatus
from wa_worker.settings import load_settings

TTL_MS = 3_600_000


class Primaries:
    """The cluster's primaries as plain connections, by node id."""

    def __init__(self, url: str) -> None:
        cluster = redis.RedisCluster.from_url(url)
        try:
            self.nodes = {
                str(node.name): redis.Redis(host=node.host, port=node.port)
                for node in cluster.get_primaries()
            }
        finally:
            cluster.close()
        self.ids = {n: _text(c.execute_command("CLUSTER", "MYID")) for n, c in self.nodes.items()}

    def owner(self, slot: int, asked: str) -> str:
        """Who owns `slot`, as the primary `asked` sees it."""
        for entry in self.nodes[asked].execute_command("CLUSTER", "SLOTS"):
            if int(entry[0]) <= slot <= int(entry[1]):
                return f"{_text(entry[2][0])}:{entry[2][1]}"
        raise AssertionError(f"no primary owns slot {slot}")

    def start(self, slot: int, src: str, dst: str) -> None:
        self.nodes[dst].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.ids[src])
        self.nodes[src].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.ids[dst])

    def migrate_keys(self, slot: int, src: str, dst: str, asking: bool = False) -> None:
        """MIGRATE every key of `slot` from `src` to `dst`; `asking` when `src` no longer owns
        the slot (it must be IMPORTING it then), as for keys a failed test left behind."""
        conn, target = self.nodes[src], self.nodes[dst].connection_pool.connection_kwargs
        while keys := conn.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
            command = ("MIGRATE", target["host"], target["port"], "", 0, 5000, "REPLACE")
            if not asking:
                conn.execute_command(*command[:-1], "KEYS", *keys)
                continue
            link = conn.connection_pool.get_connection()
            try:
                link.send_command("ASKING")
                link.read_response()
                link.send_command(*command, "KEYS", *keys)
                link.read_response()
            finally:
                conn.connection_pool.release(link)

    def finish(self, slot: int, dst: str) -> None:
        # The new owner first, then every other primary (replicas learn by gossip).
        for name in [dst, *(n for n in self.nodes if n != dst)]:
            self.nodes[name].execute_command("CLUSTER", "SETSLOT", slot, "NODE", self.ids[dst])

    def move(self, slot: int, src: str, dst: str) -> None:
        self.start(slot, src, dst)
        self.migrate_keys(slot, src, dst)
        self.finish(slot, dst)

    def close(self) -> None:
        for conn in self.nodes.values():
            conn.close()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
def primaries(redis_cluster_url: str) -> Iterator[Primaries]:
    nodes = Primaries(redis_cluster_url)
    yield nodes
    nodes.close()


def _in_bucket(keys: DedupeKeys, bucket: int, n: int) -> list[str]:
    found = (f"wamid.m{i}" for i in itertools.count())
    return list(itertools.islice((k for k in found if keys.bucket(keys.digest(k)) == bucket), n))


def test_batches_follow_a_slot_migration(
    redis_cluster_url: str, primaries: Primaries, redis_prefix: str
) -> None:
    keys = DedupeKeys(redis_prefix, TTL_MS)
    bucket = 5
    slot = key_slot(keys.day_key(bucket, 0).encode())
    held, finished, fresh, later = _in_bucket(keys, bucket, 4)
    src = primaries.owner(slot, next(iter(primaries.nodes)))
    dst = next(name for name in primaries.nodes if name != src)

    async def batches() -> list[list[ClaimStatus]]:
        store = AsyncDedupeStore(
            async_redis_client(load_settings(redis_url=redis_cluster_url)), keys
        )
        seen = []

        async def claim(token: str, *events: str) -> None:
            replies = await store.run_batch([ClaimRequest(k, token, 60_000) for k in events])
            seen.append([r.status for r in replies])

        try:
            await claim("a", held, finished)
            await store.run_batch([], dones=[(finished, "processed")])
            # Mid-migration every call of the bucket has keys on both sides or none yet
            # (older days): TRYAGAIN, which redis-py retries for a moment, then the batch
            # fails whole, to be retried by the runtime (each call atomic, all idempotent).
            primaries.start(slot, src, dst)
            primaries.migrate_keys(slot, src, dst)
            with pytest.raises(redis.RedisError):
                await claim("b", held, finished, fresh)
            # Moved: the client's slot map is stale, MOVED sends it to the new owner.
            primaries.finish(slot, dst)
            await claim("b", held, finished, fresh)
            # A migration that ends within redis-py's TRYAGAIN retries goes unnoticed.
            primaries.start(slot, dst, src)
            primaries.migrate_keys(slot, dst, src)
            timer = threading.Timer(0.1, primaries.finish, (slot, src))
            timer.start()
            try:
                await claim("c", held, finished, fresh, later)
            finally:
                timer.join()
        finally:
            await store.aclose()
        return seen

    try:
        before, moved, back = asyncio.run(batches())
    finally:
        _restore(primaries, slot, src, dst, redis_prefix)
    busy, done, claimed = ClaimStatus.BUSY, ClaimStatus.DONE, ClaimStatus.CLAIMED
    assert before == [claimed, claimed]
    assert moved == [busy, done, claimed]
    assert back == [busy, done, busy, claimed]


def _restore(primaries: Primaries, slot: int, src: str, dst: str, prefix: str) -> None:
    """The shared dev cluster gets its slot back, whatever state the test left it in."""
    for conn in primaries.nodes.values():
        conn.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    if primaries.owner(slot, src) == dst:
        primaries.move(slot, dst, src)
    elif primaries.nodes[dst].execute_command("CLUSTER", "COUNTKEYSINSLOT", slot):
        # Never moved, but keys migrated already: bring them back, then settle the slot.
        primaries.nodes[dst].execute_command(
            "CLUSTER", "SETSLOT", slot, "IMPORTING", primaries.ids[src]
        )
        primaries.migrate_keys(slot, dst, src, asking=True)
        primaries.nodes[dst].execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        primaries.finish(slot, src)
    conn = primaries.nodes[src]
    for key in conn.scan_iter(match=f"{prefix}*", count=1000):
        conn.delete(key)
