"""Crash-safe dedupe in Redis: a claim with a lease before processing, a done marker after.

One hash per event key (`<prefix>evt:<event key>`), living for the dedupe window:
    state       "claim" or "done"
    token       the claimant's random token (a resumed run keeps it: its claim stays its own)
    attempts    handler calls made so far (survives a lost recovery directory)
    lease_until epoch ms; after it a claim left by a crashed run may be taken over
    outcome     "processed" or "dlq", once done

The lease lives in a field rather than the key's TTL so the attempt count outlives it.
Every call takes a batch and makes one pipelined round trip.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis

from wa_worker import metrics
from wa_worker.models.completions import ClaimStatus
from wa_worker.settings import Settings

_NOW_MS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

CLAIM_LUA = (
    _NOW_MS
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'token', 'attempts', 'lease_until')
local attempts = tonumber(h[3]) or 0
if h[1] == 'done' then return {'done', attempts, 0} end
if h[1] == 'claim' and h[2] ~= ARGV[1] and (tonumber(h[4]) or 0) > now_ms then
  return {'busy', attempts, tonumber(h[4]) - now_ms}
end
redis.call('HSET', KEYS[1], 'state', 'claim', 'token', ARGV[1], 'attempts', attempts,
           'lease_until', now_ms + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'claimed', attempts, 0}
"""
)

RECORD_ATTEMPTS_LUA = (
    _NOW_MS
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'token')
if h[1] ~= 'claim' or h[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'attempts', ARGV[2], 'lease_until', now_ms + tonumber(ARGV[3]))
return 1
"""
)


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    event_key: str
    token: str
    lease_ms: int


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    event_key: str
    token: str
    attempts: int
    lease_ms: int


# (event key, "processed" | "dlq"), written once Kafka has the event's outcome.
DoneMark = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ClaimReply:
    status: ClaimStatus
    attempts: int
    wait_ms: int


class DedupeKeys:
    def __init__(self, prefix: str, ttl_ms: int) -> None:
        self.prefix = prefix
        self.ttl_ms = ttl_ms

    def key(self, event_key: str) -> str:
        return f"{self.prefix}evt:{event_key}"


class DedupeStore(Protocol):
    """What the I/O runtime needs: Redis (`AsyncDedupeStore`) or, offline, in process memory
    (`wa_worker.memory_dedupe.MemoryDedupeStore`)."""

    async def run_batch(
        self,
        claims: Sequence[ClaimRequest],
        records: Sequence[AttemptRecord] = (),
        dones: Sequence[DoneMark] = (),
    ) -> list[ClaimReply]: ...

    async def aclose(self) -> None: ...


def dedupe_keys(settings: Settings) -> DedupeKeys:
    return DedupeKeys(settings.redis_key_prefix, int(settings.dedupe_ttl_days * 86_400_000))


def redis_store(settings: Settings) -> AsyncDedupeStore:
    """The store on REDIS_URL (created inside the runtime's event loop)."""
    timeout = settings.redis_timeout_ms / 1000
    client = aioredis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    return AsyncDedupeStore(client, dedupe_keys(settings))


class AsyncDedupeStore:
    """Claims and attempt records, used from the I/O runtime's event loop."""

    def __init__(self, client: aioredis.Redis, keys: DedupeKeys) -> None:
        self._client = client
        self._keys = keys
        self._claim = client.register_script(CLAIM_LUA)
        self._record = client.register_script(RECORD_ATTEMPTS_LUA)

    async def run_batch(
        self,
        claims: Sequence[ClaimRequest],
        records: Sequence[AttemptRecord] = (),
        dones: Sequence[DoneMark] = (),
    ) -> list[ClaimReply]:
        """One pipelined round trip for a batch; returns the claim replies in order."""
        started = time.perf_counter()
        async with self._client.pipeline(transaction=False) as pipe:
            for c in claims:
                await self._claim(
                    keys=[self._keys.key(c.event_key)],
                    args=[c.token, c.lease_ms, self._keys.ttl_ms],
                    client=pipe,
                )
            for r in records:
                await self._record(
                    keys=[self._keys.key(r.event_key)],
                    args=[r.token, r.attempts, r.lease_ms],
                    client=pipe,
                )
            for event_key, outcome in dones:
                key = self._keys.key(event_key)
                pipe.hset(key, mapping={"state": "done", "outcome": outcome})
                pipe.pexpire(key, self._keys.ttl_ms)
            replies: list[Any] = await pipe.execute()
        metrics.REDIS_LATENCY.observe(time.perf_counter() - started)
        return [_claim_reply(reply) for reply in replies[: len(claims)]]

    async def aclose(self) -> None:
        await self._client.aclose()


def _claim_reply(reply: Sequence[Any]) -> ClaimReply:
    status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    return ClaimReply(ClaimStatus(status), int(reply[1]), int(reply[2]))


class DedupeAdmin:
    """Operator actions on the dedupe keys (the CLI's DLQ re-drive)."""

    def __init__(self, client: redis.Redis, keys: DedupeKeys) -> None:
        self._client = client
        self._keys = keys

    def forget(self, event_keys: Sequence[str]) -> int:
        """Remove markers so the events can be processed again (DLQ re-drive)."""
        if not event_keys:
            return 0
        return int(self._client.delete(*(self._keys.key(k) for k in event_keys)))
