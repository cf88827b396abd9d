"""The one synchronous Redis client (tools, replay's probe, the health probe): REDIS_TIMEOUT_MS
unless the caller gives its own timeout."""

from __future__ import annotations

import redis

from tests.conftest import Stack
from wa_worker.core.redis_client import redis_client
from wa_worker.process.health import Probes
from wa_worker.settings import load_settings


def test_a_given_timeout_replaces_redis_timeout_ms(stack: Stack) -> None:
    settings = load_settings(redis_url=stack.redis_url, redis_timeout_ms=750)
    client = redis_client(settings, 0.25)
    try:
        assert client.ping()
        assert isinstance(client, redis.Redis)  # REDIS_URL names a standalone Redis
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.25
    finally:
        client.close()


def test_the_health_probe_checks_redis_with_its_own_timeout(stack: Stack) -> None:
    settings = load_settings(
        kafka_brokers=stack.brokers, redis_url=stack.redis_url, redis_timeout_ms=750
    )
    probes = Probes(settings, timeout_s=1.5)
    probes.redis_dedupe()
    assert isinstance(probes._redis, redis.Redis)
    kwargs = probes._redis.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 1.5
