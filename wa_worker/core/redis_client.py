"""The Redis clients: synchronous for the tools and the health probe, asynchronous for the flow
(`dedupe.redis_store`). Standalone or Cluster, whichever REDIS_URL names.

A minimal stand-in (issue 13): a Redis Cluster is recognised by `INFO cluster`
(`cluster_enabled:1`) on the node REDIS_URL names; a Redis that does not answer is taken as
standalone. REDIS_MODE, Sentinel and TLS settings come with the full connection layer.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from wa_worker.settings import Settings

SyncRedis = redis.Redis | redis.RedisCluster
AsyncRedis = aioredis.Redis | aioredis.RedisCluster


def is_cluster(settings: Settings, timeout_s: float) -> bool:
    probe = redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    except redis.RedisError:  # not reachable now: events wait for it, as in any outage
        return False
    finally:
        probe.close()


def redis_client(settings: Settings, timeout_s: float | None = None) -> SyncRedis:
    """REDIS_URL with a socket and connect timeout, REDIS_TIMEOUT_MS unless `timeout_s` is
    given: a Redis that does not answer fails the caller instead of holding it."""
    timeout = settings.redis_timeout_ms / 1000 if timeout_s is None else timeout_s
    if is_cluster(settings, timeout):
        return redis.RedisCluster.from_url(
            settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )


def async_redis_client(settings: Settings) -> AsyncRedis:
    """The flow's client, REDIS_TIMEOUT_MS on every socket (created inside its event loop)."""
    timeout = settings.redis_timeout_ms / 1000
    if is_cluster(settings, timeout):
        return aioredis.RedisCluster.from_url(
            settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    return aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
