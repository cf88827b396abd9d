"""Crash-safe dedupe in Redis: a claim with a lease before processing, a done marker after.

Layout (v2). An event key is hashed to a 12-byte digest (blake2b); its first byte picks one
of `BUCKETS` buckets. Every key one script call touches carries its bucket's hash tag, so
it lives in one Redis Cluster slot, and a batch is one script call per bucket and kind
(claims, attempt records, done markers), pipelined: one round trip per node. Standalone
Redis gets the same keys and the same calls. `<s>` is 4 hex digits of the prefix's hash:
prefixes sharing a cluster (a worker and its replays, several deployments) use other slots.

    <prefix>{<s>.<b>}d:<day>   one hash per bucket and day (`day` = epoch ms // 1 day, the
                               worker's clock): digest -> "p" (processed) or "d" (dlq), the
                               finished events. It expires whole at the end of its day plus
                               the dedupe window (PEXPIREAT): a finished event is one hash
                               field, ~70 B, no token, lease or key of its own.
    <prefix>{<s>.<b>}c:<hex>   one hash per event in flight: token (the claimant's; a resumed
                               run keeps it), attempts (handler calls made; survives a lost
                               recovery directory), lease_until (epoch ms, Redis's clock;
                               after it a crashed run's claim may be taken over). Deleted when
                               the event is done, else it expires after the dedupe window.
    <prefix>v2:since           when a v2 worker first ran here (standalone Redis only).

Statuses (core/status_order.py). An event key `<message id>:<ranked status>` is a status's:
its bucket is picked by its message id, not by its own digest, so all statuses of one message
(their claim keys and done markers) share one slot, and the message's highest status so far
needs no key or field of its own: it is the highest status of the message whose marker exists
(a claim key, or a done marker on a day still alive). A status's claim also looks up the
markers of the message's higher statuses (sent < delivered < read < played < failed: `failed`
is final for the message's send attempt), in the same call, and answers the highest it found:
above its own, the status is superseded. Its own marker never counts, so a redelivered copy or
a claim resumed after a crash is not superseded by itself; a higher status claimed and then
lost in a crash still counts (it was observed). So the rank costs no memory and lasts as long
as the markers (the dedupe window); a DLQ re-drive, which deletes dlq markers, forgets those.
Upgrading from the layout before statuses moves status events to other buckets: a status
finished before and redelivered after is handled once more, unflagged, and old and new
workers side by side miss each other's status claims (stop the old ones first).

A claim reads the event's claim key, then the day hashes still alive (today first). So an
event stays done for DEDUPE_TTL_DAYS plus up to one day (the rest of the day it finished on;
clock skew between workers moves that edge by the skew), after which it may be processed
again. A DLQ re-drive deletes only "d" fields. Each script call is atomic.

Upgrade from v1 (`<prefix>evt:<event key>`, one hash per event with state, token, attempts,
lease_until and outcome): on standalone Redis, the only kind v1 ran on, claims and re-drives
also read the v1 key for one window after the first v2 worker ran. A v1 done marker reads as
done; a v1 claim as a claim, taken over into v2 (attempts kept) once its lease ran out; a
re-drive resets v1 dlq markers. v1 keys expire by themselves within that window. A v1 worker
does not see v2 markers: stop v1 workers before starting v2 ones.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from wa_worker.core import metrics
from wa_worker.core.redis_client import AsyncRedis, SyncRedis, async_redis_client
from wa_worker.core.sentinel_follow import PrimaryFollower
from wa_worker.core.status_order import NAMES, StatusOf, ranks_above, status_of
from wa_worker.models.completions import ClaimStatus
from wa_worker.settings import Settings

DAY_MS = 86_400_000
# Part of the layout: changing either hides every marker written before.
BUCKETS = 32  # see README "Dedupe in Redis": spread over nodes vs calls per batch
DIGEST_BYTES = 12  # 96 bits: a collision (an event taken for done) ~1e-11 per 7 days at 1000/s
OUTCOME_CODES: dict[str, bytes] = {"processed": b"p", "dlq": b"d"}

_NOW_MS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The per-event arguments of a call travel as one string (packing thousands of small
# arguments was most of the client's time): fixed-width digests, and `<length>:<bytes>` or
# `<number>:` for the rest. Keys stay in KEYS, so a call is refused whole, never half run,
# by a node that does not own its slot (during a resharding).
_READER = """
local blob, pos = ARGV[#ARGV], 1
local function take(len)
  local s = string.sub(blob, pos, pos + len - 1)
  pos = pos + len
  return s
end
local function number()
  local stop = string.find(blob, ':', pos, true)
  local v = tonumber(string.sub(blob, pos, stop - 1))
  pos = stop + 1
  return v
end
"""

# One bucket's claims. KEYS: n day hashes (today first), then the m events' claim keys, then
# the claim keys of the statuses' higher statuses. ARGV: n, m, the claim keys' TTL, the v1
# prefix ('' on a Cluster), then per event: digest, lease ms, token (and its event key, for its
# v1 key, when reading v1), then k (0 but for a status): its k higher statuses, highest first,
# each a rank digit and a digest.
CLAIM_LUA = (
    _NOW_MS
    + _READER
    + """
local n, m, ttl, v1 = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local fields, leases, tokens, olds, done = {}, {}, {}, {}, {}
-- above[i]: event i's higher statuses, as {rank, index in `fields`, claim key}.
local above, extra = {}, n + m
for i = 1, m do
  fields[i], leases[i] = take(12), number()
  tokens[i] = take(number())
  if v1 ~= '' then olds[i] = v1 .. 'evt:' .. take(number()) end
  local k = tonumber(take(1))
  if k > 0 then
    above[i] = {}
    for j = 1, k do
      local rank = tonumber(take(1))
      table.insert(fields, take(12))
      extra = extra + 1
      above[i][j] = {rank, #fields, KEYS[extra]}
    end
  end
end
-- One HMGET per day for all the call's events (and higher statuses): done on some day.
for d = 1, n do
  local got = redis.call('HMGET', KEYS[d], unpack(fields))
  for i = 1, #fields do
    if got[i] then done[i] = true end
  end
end
local replies = {}
for i = 1, m do
  local token, claim, old = tokens[i], KEYS[n + i], olds[i]
  local h = redis.call('HMGET', claim, 'token', 'attempts', 'lease_until')
  local reply, from_v1 = nil, false
  if not h[1] and done[i] then
    reply = {'done', 0, 0}
  elseif not h[1] and old then
    -- v1 keys only on standalone Redis (no slots), so reading one not in KEYS is safe there.
    local o = redis.call('HMGET', old, 'state', 'token', 'attempts', 'lease_until')
    if o[1] == 'done' then
      reply = {'done', tonumber(o[3]) or 0, 0}
    elseif o[1] == 'claim' then
      h, from_v1 = {o[2], o[3], o[4]}, true
    end
  end
  if not reply then
    local attempts, lease_until = tonumber(h[2]) or 0, tonumber(h[3]) or 0
    if h[1] and h[1] ~= token and lease_until > now_ms then
      reply = {'busy', attempts, lease_until - now_ms}
    else
      redis.call('HSET', claim, 'token', token, 'attempts', attempts,
                 'lease_until', now_ms + leases[i])
      redis.call('PEXPIRE', claim, ttl)
      if from_v1 then redis.call('DEL', old) end
      reply = {'claimed', attempts, 0}
      if above[i] then
        -- The highest status above this one seen so far: done, or claimed (this call's
        -- earlier claims included).
        reply[4] = 0
        for _, h in ipairs(above[i]) do
          if done[h[2]] or redis.call('EXISTS', h[3]) == 1 then
            reply[4] = h[1]
            break
          end
        end
      end
    end
  end
  replies[i] = reply
end
return replies
"""
)

# KEYS: claim keys. ARGV per event: attempts, lease ms, token. Only the holder's count.
RECORD_ATTEMPTS_LUA = (
    _NOW_MS
    + _READER
    + """
for i, key in ipairs(KEYS) do
  local attempts, lease = number(), number()
  if redis.call('HGET', key, 'token') == take(number()) then
    redis.call('HSET', key, 'attempts', attempts, 'lease_until', now_ms + lease)
  end
end
return #KEYS
"""
)

# KEYS: today's day hash, then the events' claim keys. ARGV: the day hash's expiry (epoch ms),
# then per event: digest and outcome code, 13 bytes.
MARK_DONE_LUA = """
local day, blob = KEYS[1], ARGV[2]
if redis.call('EXISTS', day) == 0 then
  redis.call('HSET', day, '~', ARGV[3])
end
local entries = {}
for i = 2, #KEYS do
  local at = (i - 2) * 13 + 1
  entries[2 * i - 3] = string.sub(blob, at, at + 11)
  entries[2 * i - 2] = string.sub(blob, at + 12, at + 12)
end
redis.call('HSET', day, unpack(entries))
redis.call('DEL', unpack(KEYS, 2))
redis.call('PEXPIREAT', day, ARGV[1])
return #KEYS - 1
"""

# KEYS as for a claim. ARGV: n, apply ('1' deletes, '0' only looks), the v1 prefix, then per
# event: digest (and event key when reading v1). An event done as processed on any day stays
# done; one only ever dead-lettered is reset.
RESET_DEAD_LETTERED_LUA = (
    _READER
    + """
local n, apply, v1 = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3]
local m = #KEYS - n
local fields, olds, processed, dlq_days = {}, {}, {}, {}
for i = 1, m do
  fields[i], dlq_days[i] = take(12), {}
  if v1 ~= '' then olds[i] = v1 .. 'evt:' .. take(number()) end
end
for d = 1, n do
  local got = redis.call('HMGET', KEYS[d], unpack(fields))
  for i = 1, m do
    if got[i] == 'p' then processed[i] = true end
    if got[i] == 'd' then table.insert(dlq_days[i], KEYS[d]) end
  end
end
local replies = {}
for i = 1, m do
  local state, old = 'absent', olds[i]
  if processed[i] then
    state = 'processed'
  elseif #dlq_days[i] > 0 then
    state = 'dead_lettered'
    if apply then
      for _, day in ipairs(dlq_days[i]) do redis.call('HDEL', day, fields[i]) end
    end
  elseif redis.call('EXISTS', KEYS[n + i]) == 1 then
    state = 'in_flight'
  elseif old then
    local o = redis.call('HMGET', old, 'state', 'outcome')
    if o[1] == 'claim' then
      state = 'in_flight'
    elseif o[1] == 'done' and o[2] ~= 'dlq' then
      state = 'processed'
    elseif o[1] == 'done' then
      state = 'dead_lettered'
      if apply then redis.call('DEL', old) end
    end
  end
  replies[i] = state
end
return replies
"""
)


class Lua:
    """A script and its SHA1, run by EVALSHA (EVAL once on a node that lacks it)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


CLAIM = Lua(CLAIM_LUA)
RECORD = Lua(RECORD_ATTEMPTS_LUA)
DONE = Lua(MARK_DONE_LUA)
RESET = Lua(RESET_DEAD_LETTERED_LUA)


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
    prior_rank: int = 0  # a claimed status: the highest rank above its own seen, else 0


# Messages whose status keys are kept derived (~1 KB each): the statuses of a campaign's
# messages arrive within minutes of each other.
MESSAGES_CACHED = 4096


@dataclass(frozen=True, slots=True)
class MessageKeys:
    """A message's bucket, and each ranked status's digest and claim key (by rank)."""

    bucket: int
    digests: dict[int, bytes]
    claim_keys: dict[int, str]


class DedupeKeys:
    """Key names of the layout (module docstring); `period_ms` is one day but in tests."""

    def __init__(self, prefix: str, ttl_ms: int, period_ms: int = DAY_MS) -> None:
        self.prefix = prefix
        self.ttl_ms = ttl_ms
        self.period_ms = period_ms
        self._salt = hashlib.blake2b(_utf8(prefix), digest_size=2).hexdigest()

        # A message's statuses come in several batches (sent, delivered, read: each claimed,
        # then marked done) and each claim names the higher ones too: their keys are derived
        # once per message, for the messages seen lately.
        self.message = functools.lru_cache(maxsize=MESSAGES_CACHED)(self._message_keys)

    def digest(self, event_key: str) -> bytes:
        return hashlib.blake2b(_utf8(event_key), digest_size=DIGEST_BYTES).digest()

    def place(self, event_key: str, status: StatusOf | None = None) -> tuple[bytes, int]:
        """The event's digest and bucket; a status's bucket is its message id's. `status`:
        the key's `status_of`, when the caller has it already."""
        if status is None:
            status = status_of(event_key)
        if status is None:
            digest = self.digest(event_key)
            return digest, self.bucket(digest)
        message = self.message(status.message_id)
        return message.digests[status.rank], message.bucket

    def _message_keys(self, message_id: str) -> MessageKeys:
        bucket = self.bucket(self.digest(message_id))
        digests = {rank: self.digest(f"{message_id}:{name}") for rank, name in NAMES.items()}
        claims = {rank: self.claim_key(digest, bucket) for rank, digest in digests.items()}
        return MessageKeys(bucket, digests, claims)

    @staticmethod
    def bucket(digest: bytes) -> int:
        return digest[0] % BUCKETS

    def claim_key(self, digest: bytes, bucket: int | None = None) -> str:
        bucket = self.bucket(digest) if bucket is None else bucket
        return f"{self.prefix}{{{self._salt}.{bucket}}}c:{digest.hex()}"

    def day_key(self, bucket: int, day: int) -> str:
        return f"{self.prefix}{{{self._salt}.{bucket}}}d:{day}"

    def window_days(self, now_ms: int) -> list[int]:
        """The days whose hash may still be alive, today first."""
        today, oldest = now_ms // self.period_ms, (now_ms - self.ttl_ms) // self.period_ms
        return list(range(today, oldest - 1, -1))

    def expire_at_ms(self, day: int) -> int:
        return (day + 1) * self.period_ms + self.ttl_ms

    def v1_key(self, event_key: str) -> str:
        """Where the v1 layout kept an event's marker (read on standalone Redis only)."""
        return f"{self.prefix}evt:{event_key}"

    def v2_since_key(self) -> str:
        """When a v2 worker first ran here (epoch ms): v1 markers are read for one window."""
        return f"{self.prefix}v2:since"


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


# Planning a batch: pure, no I/O. Each call carries one bucket's events (at most
# _SCRIPT_BATCH); `Planned.events` are the indices, in the batch, of the events it answers for.


@dataclass(frozen=True, slots=True)
class ScriptCall:
    script: Lua
    keys: list[str]
    args: list[bytes | str | int]


@dataclass(frozen=True, slots=True)
class Planned:
    call: ScriptCall
    events: list[int]


# Keys per script call: a script blocks Redis while it runs, so a backlog of done markers
# after an outage goes out as several calls in the same pipeline.
_SCRIPT_BATCH = 1000


def _by_bucket(buckets: Sequence[int]) -> Iterator[tuple[int, list[int]]]:
    groups: dict[int, list[int]] = {}
    for i, bucket in enumerate(buckets):
        groups.setdefault(bucket, []).append(i)
    for bucket, indices in groups.items():
        for start in range(0, len(indices), _SCRIPT_BATCH):
            yield bucket, indices[start : start + _SCRIPT_BATCH]


def _places(keys: DedupeKeys, event_keys: Sequence[str]) -> tuple[list[bytes], list[int]]:
    places = [keys.place(k) for k in event_keys]
    return [digest for digest, _ in places], [bucket for _, bucket in places]


def _sized(data: bytes) -> bytes:
    return b"%d:%s" % (len(data), data)


def _utf8(text: str) -> bytes:
    # surrogatepass: a JSON payload may carry a lone surrogate, which must not crash
    return text.encode("utf-8", "surrogatepass")


def plan_claims(
    keys: DedupeKeys,
    claims: Sequence[ClaimRequest],
    now_ms: int,
    v1: bool,
    ttl_ms: int | None = None,
) -> list[Planned]:
    statuses = [status_of(c.event_key) for c in claims]
    places = [keys.place(c.event_key, status) for c, status in zip(claims, statuses, strict=True)]
    digests, buckets = [digest for digest, _ in places], [bucket for _, bucket in places]
    days = keys.window_days(now_ms)
    v1_prefix = keys.prefix if v1 else ""
    planned = []
    for bucket, indices in _by_bucket(buckets):
        blob: list[bytes] = []
        higher_keys: list[str] = []
        for i in indices:
            c = claims[i]
            blob += (digests[i], b"%d:" % c.lease_ms, _sized(_utf8(c.token)))
            if v1:
                blob.append(_sized(_utf8(c.event_key)))
            if status := statuses[i]:
                higher = ranks_above(status.rank)
                message = keys.message(status.message_id)
                blob.append(b"%d" % len(higher))
                for rank in higher:
                    blob += (b"%d" % rank, message.digests[rank])
                    higher_keys.append(message.claim_keys[rank])
            else:
                blob.append(b"0")
        call_keys = [keys.day_key(bucket, d) for d in days]
        call_keys += [keys.claim_key(digests[i], bucket) for i in indices]
        call_keys += higher_keys
        args: list[bytes | str | int] = [len(days), len(indices), ttl_ms or keys.ttl_ms]
        args += (v1_prefix, b"".join(blob))
        planned.append(Planned(ScriptCall(CLAIM, call_keys, args), indices))
    return planned


def plan_records(keys: DedupeKeys, records: Sequence[AttemptRecord]) -> list[ScriptCall]:
    digests, buckets = _places(keys, [r.event_key for r in records])
    calls = []
    for bucket, indices in _by_bucket(buckets):
        blob = b"".join(
            b"%d:%d:%s" % (r.attempts, r.lease_ms, _sized(_utf8(r.token)))
            for r in (records[i] for i in indices)
        )
        claim_keys = [keys.claim_key(digests[i], bucket) for i in indices]
        calls.append(ScriptCall(RECORD, claim_keys, [blob]))
    return calls


# A day hash's first field: a value longer than hash-max-listpack-value (64 by default) makes
# it a hash table from the start. A listpack (the encoding of small hashes) is searched end
# to end by every lookup and HSET: up to 512 entries, most of a claim's cost.
_HASHTABLE = b"listpack-off:" + b"-" * 500


def plan_dones(keys: DedupeKeys, dones: Sequence[DoneMark], now_ms: int) -> list[ScriptCall]:
    digests, buckets = _places(keys, [event_key for event_key, _ in dones])
    codes = [OUTCOME_CODES[outcome] for _, outcome in dones]  # the sinks write these two
    today = now_ms // keys.period_ms
    calls = []
    for bucket, indices in _by_bucket(buckets):
        blob = b"".join(digests[i] + codes[i] for i in indices)
        claim_keys = (keys.claim_key(digests[i], bucket) for i in indices)
        call_keys = [keys.day_key(bucket, today), *claim_keys]
        args: list[bytes | str | int] = [keys.expire_at_ms(today), blob, _HASHTABLE]
        calls.append(ScriptCall(DONE, call_keys, args))
    return calls


def plan_resets(
    keys: DedupeKeys, event_keys: Sequence[str], now_ms: int, v1: bool, apply: bool
) -> list[Planned]:
    digests, buckets = _places(keys, event_keys)
    days = keys.window_days(now_ms)
    planned = []
    for bucket, indices in _by_bucket(buckets):
        blob = b"".join(digests[i] + (_sized(_utf8(event_keys[i])) if v1 else b"") for i in indices)
        call_keys = [keys.day_key(bucket, d) for d in days]
        call_keys += [keys.claim_key(digests[i], bucket) for i in indices]
        args: list[bytes | str | int] = [len(days), int(apply), keys.prefix if v1 else "", blob]
        planned.append(Planned(ScriptCall(RESET, call_keys, args), indices))
    return planned


def _in_order(planned: Sequence[Planned], replies: Sequence[Any], count: int) -> list[Any]:
    """The per-event replies of the planned calls, back in the batch's order."""
    ordered: list[Any] = [None] * count
    for plan, reply in zip(planned, replies, strict=True):
        for i, event_reply in zip(plan.events, reply, strict=True):
            ordered[i] = event_reply
    return ordered


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# The script's status words, as the client returns them (bytes; str when decoding replies).
_CLAIM_STATUSES: dict[Any, ClaimStatus] = {
    **{status.value.encode(): status for status in ClaimStatus},
    **{status.value: status for status in ClaimStatus},
}


def _claim_reply(reply: Sequence[Any]) -> ClaimReply:
    prior_rank = int(reply[3]) if len(reply) > 3 else 0
    status = _CLAIM_STATUSES.get(reply[0]) or ClaimStatus(_text(reply[0]))  # else: says why
    return ClaimReply(status, int(reply[1]), int(reply[2]), prior_rank)


# Running calls: one pipeline (redis-py's ClusterPipeline sends it as one round trip per node
# and follows MOVED/ASK). A node without the scripts (a fresh, failed-over or resharded one)
# answers NOSCRIPT to those calls only, which are sent again as EVAL: loaded there for next time.


def _check(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _queue(pipe: Any, call: ScriptCall, by_sha: bool) -> None:
    # execute_command: redis-py's sync ClusterPipeline blocks its `evalsha` method (and so
    # Script objects) but routes a raw EVALSHA by its keys, which here share one slot.
    command, body = ("EVALSHA", call.script.sha) if by_sha else ("EVAL", call.script.text)
    pipe.execute_command(command, body, len(call.keys), *call.keys, *call.args)


async def run_calls_async(client: AsyncRedis, calls: Sequence[ScriptCall]) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        for call in calls:
            _queue(pipe, call, by_sha=True)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        async with client.pipeline(transaction=False) as pipe:
            for i in missing:
                _queue(pipe, calls[i], by_sha=False)
            for i, reply in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
    return _check(replies)


def run_calls(client: SyncRedis, calls: Sequence[ScriptCall]) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        for call in calls:
            _queue(pipe, call, by_sha=True)
        replies: list[Any] = pipe.execute(raise_on_error=False)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        with client.pipeline(transaction=False) as pipe:
            for i in missing:
                _queue(pipe, calls[i], by_sha=False)
            for i, reply in zip(missing, pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
    return _check(replies)


def reads_v1(client: SyncRedis | AsyncRedis) -> bool:
    """v1 markers can only be on a standalone Redis (v1 batches never worked on a Cluster)."""
    return not isinstance(client, redis.RedisCluster | aioredis.RedisCluster)


def _v1_until(client: SyncRedis, keys: DedupeKeys, now_ms: int) -> int:
    """Until when (epoch ms) v1 markers may still be alive and are read: one window after
    the first v2 worker ran (recorded once, SET NX); never on a Cluster."""
    if not reads_v1(client):
        return 0
    with client.pipeline(transaction=False) as pipe:
        pipe.set(keys.v2_since_key(), now_ms, nx=True)
        pipe.get(keys.v2_since_key())
        _, since = pipe.execute()
    return int(since) + keys.ttl_ms


async def _v1_until_async(client: AsyncRedis, keys: DedupeKeys, now_ms: int) -> int:
    if not reads_v1(client):
        return 0
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(keys.v2_since_key(), now_ms, nx=True)
        pipe.get(keys.v2_since_key())
        _, since = await pipe.execute()
    return int(since) + keys.ttl_ms


_PROBE_TTL_MS = 10_000  # the probe's claim keys expire by themselves: nothing to clean up


def check_dedupe_works(client: SyncRedis, keys: DedupeKeys) -> None:
    """One real claim of two throw-away events through the worker's own script and layout.

    A Redis can answer PING and still be unable to do the work: an ACL that denies scripts, a
    read-only replica, a cluster that refuses a call's keys across slots. Each of those
    raises here with Redis's own reason (a `redis.ResponseError`), instead of leaving every
    claim to fail and retry while the worker looks healthy."""
    nonce = time.time_ns()
    probe = [ClaimRequest(f"probe:{nonce}:{i}", "probe", _PROBE_TTL_MS) for i in range(2)]
    planned = plan_claims(keys, probe, _now_ms(), False, ttl_ms=_PROBE_TTL_MS)
    run_calls(client, [p.call for p in planned])


def redis_store(settings: Settings) -> AsyncDedupeStore:
    """The store on REDIS_URL (created inside the runtime's event loop)."""
    return AsyncDedupeStore(async_redis_client(settings), dedupe_keys(settings))


class AsyncDedupeStore:
    """Claims and attempt records, used from the I/O runtime's event loop."""

    def __init__(
        self, client: AsyncRedis, keys: DedupeKeys, now_ms: Callable[[], int] = _now_ms
    ) -> None:
        self._client = client
        self._keys = keys
        self._follower = PrimaryFollower(client)  # a Sentinel failover, followed at once
        self._v1_until: int | None = None  # looked up by the first batch
        self._now_ms = now_ms  # the day a done marker goes to; leases use Redis's clock

    async def run_batch(
        self,
        claims: Sequence[ClaimRequest],
        records: Sequence[AttemptRecord] = (),
        dones: Sequence[DoneMark] = (),
    ) -> list[ClaimReply]:
        """One pipelined round trip for a batch (attempt records, done markers, then claims);
        returns the claim replies in order.

        What this process already knows goes first: a claim of a redelivered copy must not
        read its first copy's lease as run out while that copy's done marker (after a Redis
        outage, say) or its extended lease waits in the same batch."""
        if not (claims or records or dones):
            return []
        started = time.perf_counter()
        await self._follower.check()
        now = self._now_ms()
        if self._v1_until is None:
            self._v1_until = await _v1_until_async(self._client, self._keys, now)
        calls = plan_records(self._keys, records)
        calls += plan_dones(self._keys, dones, now)
        known = len(calls)
        planned = plan_claims(self._keys, claims, now, now < self._v1_until)
        calls += [p.call for p in planned]
        replies = await run_calls_async(self._client, calls)
        metrics.REDIS_LATENCY.observe(time.perf_counter() - started)
        claim_replies = _in_order(planned, replies[known:], len(claims))
        return [_claim_reply(r) for r in claim_replies]

    async def aclose(self) -> None:
        await self._client.aclose()


class MarkerState(StrEnum):
    """What an event's marker says, as seen by a DLQ re-drive."""

    ABSENT = "absent"  # never seen, or the dedupe window passed: the worker will process it
    DEAD_LETTERED = "dead_lettered"  # done with outcome dlq: reset, so it is processed again
    PROCESSED = "processed"  # done with outcome processed: a re-drive is a duplicate
    IN_FLIGHT = "in_flight"  # claimed by a worker right now: left alone


class DedupeAdmin:
    """Operator actions on the dedupe keys (the CLI's DLQ re-drive)."""

    def __init__(
        self, client: SyncRedis, keys: DedupeKeys, now_ms: Callable[[], int] = _now_ms
    ) -> None:
        self._client = client
        self._keys = keys
        self._now_ms = now_ms
        self._v1_until: int | None = None

    def reset_dead_lettered(
        self, event_keys: Sequence[str], dry_run: bool = False
    ) -> dict[str, MarkerState]:
        """Let dead-lettered events be processed again; events processed since (for instance
        after an earlier re-drive) stay done. One pipelined round trip for the batch, atomic
        per event, so a worker finishing the event meanwhile is never undone."""
        if not event_keys:
            return {}
        now = self._now_ms()
        if self._v1_until is None:
            self._v1_until = _v1_until(self._client, self._keys, now)
        v1 = now < self._v1_until
        planned = plan_resets(self._keys, event_keys, now, v1, apply=not dry_run)
        replies = run_calls(self._client, [p.call for p in planned])
        states = _in_order(planned, replies, len(event_keys))
        return {
            key: MarkerState(_text(state)) for key, state in zip(event_keys, states, strict=True)
        }
