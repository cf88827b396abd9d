"""Redis memory per dedupe event, and dedupe round trips per second, v1 layout against v2.

    python -m bench.footprint --events 100000
    python -m bench.footprint --events 100000 --cluster-url redis://127.0.0.1:7001
    python -m bench.footprint --buckets 8,16,32,64,128   # v2 throughput per bucket count

Each layout gets a fresh `redis-server` (devtools, free port, `.stack/footprint`): the
`used_memory` delta after N events claimed and marked done, through the store the worker
uses (batches as the runtime sends them: claims of one batch with the done markers of the
one before), ÷ N; then the delta of N/10 events claimed and left in flight. A cluster given by
URL is only timed (it is shared: its memory is not ours), under a prefix deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis

from devtools import devstack
from devtools.dedupe_v1 import V1DedupeStore
from devtools.worker import ROOT
from wa_worker.core import dedupe
from wa_worker.core.dedupe import AsyncDedupeStore, ClaimReply, ClaimRequest, DedupeKeys, DoneMark

TTL_MS = 7 * dedupe.DAY_MS
FOOTPRINT_DIR = ROOT / ".stack" / "footprint"


class Store(Protocol):
    async def run_batch(
        self, claims: Sequence[ClaimRequest], records: Sequence[Any], dones: Sequence[DoneMark]
    ) -> list[ClaimReply]: ...

    async def aclose(self) -> None: ...


StoreFactory = Callable[[str, str], Store]  # (url, prefix) -> store


def v1_store(url: str, prefix: str) -> Store:
    return V1DedupeStore(aioredis.from_url(url), prefix, TTL_MS)


def v2_store(url: str, prefix: str) -> Store:
    client = aioredis.RedisCluster.from_url(url) if _cluster(url) else aioredis.from_url(url)
    return AsyncDedupeStore(client, DedupeKeys(prefix, TTL_MS))


def v2_settled_store(url: str, prefix: str) -> Store:
    """v2 more than a window after the upgrade: no v1 marker can be alive, none is read."""
    if not _cluster(url):
        client = redis.Redis.from_url(url)
        client.set(DedupeKeys(prefix, TTL_MS).v2_since_key(), 0)
        client.close()
    return v2_store(url, prefix)


LAYOUTS: dict[str, StoreFactory] = {"v1": v1_store, "v2": v2_store, "v2-settled": v2_settled_store}


@dataclass(frozen=True)
class Footprint:
    layout: str
    events: int
    finished_bytes: float  # used_memory per event claimed and done
    in_flight_bytes: float  # used_memory per event claimed, not done
    per_s: float  # claims + done markers per second


def event_keys(n: int, seed: str) -> list[str]:
    """WhatsApp-like message ids (`wamid.` + 44 base64 characters), distinct per seed."""
    return [
        "wamid." + base64.b64encode(f"{seed}-{i:012d}".encode().ljust(33, b"=")).decode()
        for i in range(n)
    ]


async def _run(store: Store, keys: list[str], batch: int, finish: bool) -> float:
    """Claims in batches, each with the done markers of the batch before; seconds taken."""
    token = os.urandom(8).hex()
    previous: list[DoneMark] = []
    started = time.perf_counter()
    for start in range(0, len(keys), batch):
        chunk = keys[start : start + batch]
        claims = [ClaimRequest(k, f"{token}-{start + i}", 30_000) for i, k in enumerate(chunk)]
        replies = await store.run_batch(claims, [], previous)
        if any(r.status.value != "claimed" for r in replies):
            raise RuntimeError("a fresh event was not claimed: the store is not empty")
        previous = [(k, "processed") for k in chunk] if finish else []
    if previous:
        await store.run_batch([], [], previous)
    return time.perf_counter() - started


def used_memory(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


@contextmanager
def fresh_redis(name: str) -> Iterator[str]:
    service = devstack.Service("redis", "redis-server", FOOTPRINT_DIR / name)
    port = devstack.start_redis(0, service=service)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        service.stop()


def status_keys(n: int, seed: str) -> list[str]:
    """Status event keys (`<message id>:<status>`): one status per message, the costliest
    case (each also stores its message's rank)."""
    return [f"{k}:read" for k in event_keys(n, seed)]


def measure(
    layout: str,
    events: int,
    batch: int = 500,
    keys: Callable[[int, str], list[str]] = event_keys,
) -> Footprint:
    """One layout on a fresh server: bytes per finished and per in-flight event, and rate."""
    factory = LAYOUTS[layout]
    with fresh_redis(f"{layout}-{uuid.uuid4().hex[:6]}") as url:

        async def go() -> tuple[float, int, int, int]:
            store = factory(url, "wa:")
            try:
                before = used_memory(url)
                elapsed = await _run(store, keys(events, "done"), batch, finish=True)
                finished = used_memory(url)
                await _run(store, keys(events // 10, "flight"), batch, finish=False)
                return elapsed, before, finished, used_memory(url)
            finally:
                await store.aclose()

        elapsed, before, finished, in_flight = asyncio.run(go())
    return Footprint(
        layout,
        events,
        (finished - before) / events,
        (in_flight - finished) / (events // 10),
        2 * events / elapsed,
    )


def timed(url: str, layout: str, events: int, batch: int) -> float:
    """Claims + done markers per second on a server we share: a prefix of our own, deleted."""
    prefix = f"fp{uuid.uuid4().hex[:8]}:"

    async def go() -> float:
        store = LAYOUTS[layout](url, prefix)
        try:
            return 2 * events / await _run(store, event_keys(events, prefix), batch, True)
        finally:
            await store.aclose()

    try:
        return asyncio.run(go())
    finally:
        _delete_prefix(url, prefix)


def _cluster(url: str) -> bool:
    client = redis.Redis.from_url(url)
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    finally:
        client.close()


def _delete_prefix(url: str, prefix: str) -> None:
    if _cluster(url):
        cluster = redis.RedisCluster.from_url(url)
        primaries = cluster.get_primaries()  # type: ignore[no-untyped-call]
        nodes = [cluster.get_redis_connection(n) for n in primaries]
    else:
        nodes = [redis.Redis.from_url(url)]
    for node in nodes:
        # One key per DEL: a node refuses a DEL of keys in different slots.
        with node.pipeline(transaction=False) as pipe:
            for key in node.scan_iter(match=f"{prefix}*", count=1000):
                pipe.delete(key)
            pipe.execute(raise_on_error=False)  # a key moved meanwhile: it expires anyway
        node.close()


def best_rates(
    targets: list[tuple[str, str, str]], events: int, batch: int, repeat: int
) -> list[float]:
    """Claims + done markers per second of each (label, url, layout), the best of `repeat`
    runs taken in turns: on a shared machine, turns see the same load."""
    best = [0.0] * len(targets)
    for _ in range(repeat):
        for i, (_, url, layout) in enumerate(targets):
            best[i] = max(best[i], timed(url, layout, events, batch))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500, help="claims per batch")
    parser.add_argument("--rate-events", type=int, default=30_000, help="events per timed run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per row (best counts)")
    parser.add_argument("--cluster-url", help="also time v2 on this Redis Cluster")
    parser.add_argument("--buckets", help="comma-separated bucket counts to time v2 with")
    parser.add_argument("--layouts", default="v1,v2", help="layouts to measure memory of")
    args = parser.parse_args()
    print(f"{'layout':8}{'events':>10}{'B/finished':>12}{'B/in-flight':>13}")
    for layout in args.layouts.split(","):
        r = measure(layout, args.events, args.batch)
        print(f"{r.layout:8}{r.events:>10,}{r.finished_bytes:>12.1f}{r.in_flight_bytes:>13.1f}")
    n, batch, repeat = args.rate_events, args.batch, args.repeat
    with fresh_redis(f"rate-{uuid.uuid4().hex[:6]}") as url:
        targets = [("v1 standalone", url, "v1"), ("v2 standalone", url, "v2")]
        targets.append(("v2 settled", url, "v2-settled"))  # a window after the upgrade
        if args.cluster_url:
            targets.append(("v2 cluster", args.cluster_url, "v2"))
        rates = best_rates(targets, n, batch, repeat)
        for (label, _, _), rate in zip(targets, rates, strict=True):
            print(f"{label:>16}: {rate:>9,.0f} claims+dones/s  {rate / rates[0]:.2f}x v1")
        if args.cluster_url:
            print(f"v2 cluster / v2 standalone: {rates[3] / rates[1]:.2f}x (v1: CROSSSLOT there)")
        for count in (int(b) for b in (args.buckets or "").split(",") if b):
            dedupe.BUCKETS = count
            rates = best_rates(targets[1:], n, batch, repeat)
            labelled = zip(targets[1:], rates, strict=True)  # v2 only
            row = ", ".join(f"{label} {rate:,.0f}/s" for (label, _, _), rate in labelled)
            print(f"buckets {count:>4}: {row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
