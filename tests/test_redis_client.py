"""The one synchronous Redis client (tools, replay's probe, the health probe): REDIS_TIMEOUT_MS
unless the caller gives its own timeout."""

from __future__ import annotations

from typing import Any

import pytest
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


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "0123abcd", 3, "wa:{a.1}d:20000", "wa:{a.1}c:ff", b"\x00\xff:blob", 86400000),
        ("CLIENT SETINFO", "LIB-NAME", "redis-py"),
        (b"CONFIG GET", b"maxmemory"),
        ("SET", "k", "é ünïcode", b""),
        ("PEXPIRE", "k", -1),
        ("EVAL", "return 1", 0, "x" * 70_000),  # past the Python packer's buffer cutoff
    ],
)
def test_the_asyncio_packing_gives_redis_pys_own_bytes(args: tuple[Any, ...]) -> None:
    import redis.asyncio.connection as aioconnection

    from wa_worker.core.redis_client import hiredis_pack_command, python_pack_command

    connection = aioconnection.Connection()
    assert b"".join(hiredis_pack_command(connection, *args)) == b"".join(
        python_pack_command(connection, *args)
    )


def test_the_asyncio_packing_refuses_what_redis_py_refuses() -> None:
    import redis.asyncio.connection as aioconnection
    from redis.exceptions import DataError

    from wa_worker.core.redis_client import hiredis_pack_command, python_pack_command

    connection = aioconnection.Connection()
    for pack in (hiredis_pack_command, python_pack_command):
        with pytest.raises(DataError):
            pack(connection, "SET", "k", None)  # type: ignore[arg-type]
