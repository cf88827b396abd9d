"""The dedupe's v1 layout (one hash per event, `<prefix>evt:<event key>`), as the worker wrote
it before issue 13: its scripts verbatim and a minimal store running them. For the upgrade
test (v2 must read v1 markers) and `bench.footprint` (bytes per event, before and after)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from wa_worker.core.dedupe import ClaimReply, ClaimRequest, DoneMark
from wa_worker.models.completions import ClaimStatus

_NOW_MS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

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

_SCRIPT_BATCH = 1000


class V1DedupeStore:
    """v1's `AsyncDedupeStore.run_batch`: one script call per kind and 1000 keys, any slots."""

    def __init__(self, client: aioredis.Redis, prefix: str, ttl_ms: int) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl_ms = ttl_ms
        self._claim = client.register_script(CLAIM_LUA)
        self._record = client.register_script(RECORD_ATTEMPTS_LUA)
        self._done = client.register_script(MARK_DONE_LUA)

    def key(self, event_key: str) -> str:
        return f"{self._prefix}evt:{event_key}"

    async def run_batch(
        self,
        claims: Sequence[ClaimRequest],
        records: Sequence[tuple[str, str, int, int]] = (),
        dones: Sequence[DoneMark] = (),
    ) -> list[ClaimReply]:
        async with self._client.pipeline(transaction=False) as pipe:
            for start in range(0, len(claims), _SCRIPT_BATCH):
                chunk = claims[start : start + _SCRIPT_BATCH]
                args: list[str | int] = [self._ttl_ms]
                for c in chunk:
                    args += (c.token, c.lease_ms)
                await self._claim([self.key(c.event_key) for c in chunk], args, client=pipe)
            for start in range(0, len(records), _SCRIPT_BATCH):
                chunk_r = records[start : start + _SCRIPT_BATCH]
                args = []
                for _, token, attempts, lease_ms in chunk_r:
                    args += (token, attempts, lease_ms)
                await self._record([self.key(r[0]) for r in chunk_r], args, client=pipe)
            for start in range(0, len(dones), _SCRIPT_BATCH):
                chunk_d = dones[start : start + _SCRIPT_BATCH]
                args = [self._ttl_ms, *(outcome for _, outcome in chunk_d)]
                await self._done([self.key(k) for k, _ in chunk_d], args, client=pipe)
            replies: list[Any] = await pipe.execute()
        claim_calls = -(-len(claims) // _SCRIPT_BATCH)
        return [
            ClaimReply(ClaimStatus(_text(r[0])), int(r[1]), int(r[2]))
            for call in replies[:claim_calls]
            for r in call
        ]

    async def aclose(self) -> None:
        await self._client.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
