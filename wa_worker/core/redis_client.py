"""The synchronous Redis client of the tools and the health probe (the flow's own client is
asynchronous: `dedupe.redis_store`)."""

from __future__ import annotations

import redis

from wa_worker.settings import Settings


def redis_client(settings: Settings, timeout_s: float | None = None) -> redis.Redis:
    """REDIS_URL with a socket and connect timeout, REDIS_TIMEOUT_MS unless `timeout_s` is
    given: a Redis that does not answer fails the caller instead of holding it."""
    timeout = settings.redis_timeout_ms / 1000 if timeout_s is None else timeout_s
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
