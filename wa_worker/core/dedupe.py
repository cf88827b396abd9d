"""Crash-safe dedupe in Redis: a claim with a lease before processing, a done marker after.

One hash per event key (`<prefix>evt:<event key>`), living for the dedupe window:
    state       "claim" or "done"
    token       the claimant's random token (a resumed run keeps it: its claim stays its own)
    attempts    handler calls made so far (survives a lost recovery directory)
    lease_until epoch ms; after it a claim left by a crashed run may be taken over
    outcome     "processed" or "dlq", once done (a DLQ re-drive resets only "dlq" markers)

The lease lives in a field rather than the key's TTL so the attempt count outlives it.
Every call takes a batch and makes one pipelined round trip, one script call per kind.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar, cast

import redis.asyncio as aioredis

from wa_worker.core import metrics
from wa_worker.core.redis_client import SyncRedis, async_redis_client
from wa_worker.models.completions import ClaimStatus
from wa_worker.settings import Settings

_NOW_MS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Each script takes a whole batch (KEYS = the events' hashes): one command to pack and one
# reply to parse per batch instead of one per event, which was most of the I/O thread's time.
# ARGV[1] is the dedupe window; then one group of arguments per key.
CLAIM_LUA = (
    _NOW_MS
    + """
local ttl = ARGV[1]
local replies = {}
for i, key in ipairs(KEYS) do
  local token, lease = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  local h = redis.call('HMGET', key, 'state', 'token', 'attempts', 'lease_until')
  local attempts = tonumber(h[3]) or 0
  if h[1] == 'done' then
    replies[i] = {'done', attempts, 0}
  elseif h[1] == 'claim' and h[2] ~= token and (tonumber(h[4]) or 0) > now_ms then
    replies[i] = {'busy', attempts, tonumber(h[4]) - now_ms}
  else
    redis.call('HSET', key, 'state', 'claim', 'token', token, 'attempts', attempts,
               'lease_until', now_ms + lease)
    redis.call('PEXPIRE', key, ttl)
    replies[i] = {'claimed', attempts, 0}
  end
end
return replies
"""
)

RECORD_ATTEMPTS_LUA = (
    _NOW_MS
    + """
for i, key in ipairs(KEYS) do
  local token = ARGV[3 * i - 2]
  local h = redis.call('HMGET', key, 'state', 'token')
  if h[1] == 'claim' and h[2] == token then
    redis.call('HSET', key, 'attempts', ARGV[3 * i - 1],
               'lease_until', now_ms + tonumber(ARGV[3 * i]))
  end
end
return #KEYS
"""
)

MARK_DONE_LUA = """
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'state', 'done', 'outcome', ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return #KEYS
"""


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
    (`wa_worker.core.memory_dedupe.MemoryDedupeStore`)."""

    async def run_batch(
        self,
        claims: Sequence[ClaimRequest],
        records: Sequence[AttemptRecord] = (),
        dones: Sequence[DoneMark] = (),
    ) -> list[ClaimReply]: ...

    async def aclose(self) -> None: ...


def dedupe_keys(settings: Settings) -> DedupeKeys:
    return DedupeKeys(settings.redis_key_prefix, int(settings.dedupe_ttl_days * 86_400_000))


_PROBE_TTL_MS = 10_000  # the probe's keys expire by themselves: nothing to clean up


def check_dedupe_works(client: SyncRedis, keys: DedupeKeys) -> None:
    """One real claim, as a batch of two throw-away keys, through the worker's own script.

    A Redis can answer PING and still be unable to do the work: an ACL that denies scripts, a
    read-only replica, a cluster that refuses a batch's keys across slots. Each of those
    raises here with Redis's own reason (a `redis.ResponseError`), instead of leaving every
    claim to fail and retry while the worker looks healthy."""
    nonce = uuid.uuid4().hex
    probe = [keys.key(f"probe:{nonce}:{i}") for i in range(2)]
    claim = client.register_script(CLAIM_LUA)
    claim(keys=probe, args=[_PROBE_TTL_MS, *("probe", _PROBE_TTL_MS) * len(probe)])


def redis_store(settings: Settings) -> AsyncDedupeStore:
    """The store on REDIS_URL, in REDIS_MODE (created inside the runtime's event loop)."""
    # cast: the batching here is standalone's (a cluster refuses its cross-slot calls, which the
    # start-up check reports); the cluster-safe store takes both kinds of client.
    client = cast(aioredis.Redis, async_redis_client(settings))
    return AsyncDedupeStore(client, dedupe_keys(settings))


class AsyncDedupeStore:
    """Claims and attempt records, used from the I/O runtime's event loop."""

    def __init__(self, client: aioredis.Redis, keys: DedupeKeys) -> None:
        self._client = client
        self._keys = keys
        self._claim = client.register_script(CLAIM_LUA)
        self._record = client.register_script(RECORD_ATTEMPTS_LUA)
        self._done = client.register_script(MARK_DONE_LUA)

    async def run_batch(
        self,
        claims: Sequence[ClaimRequest],
        records: Sequence[AttemptRecord] = (),
        dones: Sequence[DoneMark] = (),
    ) -> list[ClaimReply]:
        """One pipelined round trip for a batch; returns the claim replies in order."""
        if not (claims or records or dones):
            return []
        started = time.perf_counter()
        key, ttl_ms = self._keys.key, self._keys.ttl_ms
        async with self._client.pipeline(transaction=False) as pipe:
            for claim_chunk in _chunks(claims):
                args: list[str | int] = [ttl_ms]
                for c in claim_chunk:
                    args += (c.token, c.lease_ms)
                keys = [key(c.event_key) for c in claim_chunk]
                await self._claim(keys=keys, args=args, client=pipe)
            for record_chunk in _chunks(records):
                args = []
                for r in record_chunk:
                    args += (r.token, r.attempts, r.lease_ms)
                keys = [key(r.event_key) for r in record_chunk]
                await self._record(keys=keys, args=args, client=pipe)
            for done_chunk in _chunks(dones):
                keys = [key(event_key) for event_key, _ in done_chunk]
                args = [ttl_ms, *(outcome for _, outcome in done_chunk)]
                await self._done(keys=keys, args=args, client=pipe)
            replies: list[Any] = await pipe.execute()
        metrics.REDIS_LATENCY.observe(time.perf_counter() - started)
        claim_chunks = -(-len(claims) // _SCRIPT_BATCH)
        return [_claim_reply(reply) for chunk in replies[:claim_chunks] for reply in chunk]

    async def aclose(self) -> None:
        await self._client.aclose()


# Keys per script call: a script blocks Redis while it runs, so a backlog of done markers
# after an outage goes out as several calls in the same pipeline.
_SCRIPT_BATCH = 1000
T = TypeVar("T")


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), _SCRIPT_BATCH):
        yield items[start : start + _SCRIPT_BATCH]


def _claim_reply(reply: Sequence[Any]) -> ClaimReply:
    status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    return ClaimReply(ClaimStatus(status), int(reply[1]), int(reply[2]))


class MarkerState(StrEnum):
    """What an event's marker says, as seen by a DLQ re-drive."""

    ABSENT = "absent"  # never seen, or the dedupe window passed: the worker will process it
    DEAD_LETTERED = "dead_lettered"  # done with outcome dlq: reset, so it is processed again
    PROCESSED = "processed"  # done with outcome processed: a re-drive is a duplicate
    IN_FLIGHT = "in_flight"  # claimed by a worker right now: left alone


# Deletes the marker only when the event's last outcome was the DLQ (ARGV[1] == "1"; "0" only
# looks). Atomic per key, so a worker finishing the event meanwhile is never undone.
RESET_DEAD_LETTERED_LUA = """
local h = redis.call('HMGET', KEYS[1], 'state', 'outcome')
if not h[1] then return 'absent' end
if h[1] ~= 'done' then return 'in_flight' end
if h[2] ~= 'dlq' then return 'processed' end
if ARGV[1] == '1' then redis.call('DEL', KEYS[1]) end
return 'dead_lettered'
"""


class DedupeAdmin:
    """Operator actions on the dedupe keys (the CLI's DLQ re-drive)."""

    def __init__(self, client: SyncRedis, keys: DedupeKeys) -> None:
        self._client = client
        self._keys = keys
        self._reset = client.register_script(RESET_DEAD_LETTERED_LUA)

    def reset_dead_lettered(
        self, event_keys: Sequence[str], dry_run: bool = False
    ) -> dict[str, MarkerState]:
        """Let dead-lettered events be processed again; events processed since (for instance
        after an earlier re-drive) stay done. One pipelined round trip for the batch."""
        if not event_keys:
            return {}
        with self._client.pipeline(transaction=False) as pipe:
            for event_key in event_keys:
                self._reset(
                    keys=[self._keys.key(event_key)], args=["0" if dry_run else "1"], client=pipe
                )
            replies: list[Any] = pipe.execute()
        return {
            key: MarkerState(r.decode() if isinstance(r, bytes) else str(r))
            for key, r in zip(event_keys, replies, strict=True)
        }
