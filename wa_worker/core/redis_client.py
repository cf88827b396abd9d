"""Every Redis client of the project, for each topology (README "Redis topologies").

`redis_client` (sync: tools, `replay`, `dlq redrive`, the health probe, the start-up check) and
`async_redis_client` (the flow's dedupe store) build the client REDIS_MODE asks for:

    standalone  REDIS_URL as it is
    cluster     redis-py's RedisCluster from REDIS_URL (any node; it follows MOVED/ASK)
    sentinel    the primary of REDIS_SENTINEL_MASTER, found through REDIS_SENTINELS (plain TCP,
                REDIS_SENTINEL_PASSWORD if they require one); the client asks the sentinels
                again when its connection fails, so a failover is followed without a restart.
                REDIS_URL's user, password, db and scheme apply to the data nodes (its host
                is ignored).
    auto        sentinel when REDIS_SENTINELS is set, else `CLUSTER INFO` on REDIS_URL decides

`rediss://` turns TLS on, with REDIS_TLS_CA_FILE and the client certificate (REDIS_TLS_CERT_FILE,
REDIS_TLS_KEY_FILE) when given. Socket and connect timeouts are REDIS_TIMEOUT_MS unless the
caller passes its own.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import hiredis
import redis
import redis.asyncio as aioredis
import redis.asyncio.connection
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.connection import parse_url
from redis.exceptions import DataError
from redis.sentinel import Sentinel

from wa_worker.core.masking import mask_secrets
from wa_worker.settings import RedisMode, Settings

log = logging.getLogger(__name__)

SyncRedis = redis.Redis | redis.RedisCluster
AsyncRedis = aioredis.Redis | aioredis.RedisCluster


def redis_client(settings: Settings, timeout_s: float | None = None) -> SyncRedis:
    """The sync client for REDIS_MODE (detected when `auto`); REDIS_TIMEOUT_MS unless
    `timeout_s` is given: a Redis that does not answer fails the caller instead of holding it."""
    options = connection_options(settings, timeout_s)
    mode, asked = _detect(settings, timeout_s)
    if asked is not None:
        if mode is RedisMode.STANDALONE:
            return asked  # already connected (over TLS, a handshake saved)
        asked.close()
    if mode is RedisMode.CLUSTER:
        return redis.RedisCluster.from_url(settings.redis_url, **options)
    if mode is RedisMode.SENTINEL:
        addresses = sentinel_addresses(settings)
        sentinel = Sentinel(addresses, sentinel_kwargs=_sentinels(settings, options))
        master = settings.redis_sentinel_master
        primary = sentinel.master_for(master, **_data_node_kwargs(settings, options))
        return cast(redis.Redis, primary)
    return redis.Redis.from_url(settings.redis_url, **options)


# redis-py's own, kept for the test that holds the two equal.
python_pack_command = aioredis.connection.AbstractConnection.pack_command


def hiredis_pack_command(self: Any, *args: Any) -> list[bytes]:
    """redis-py's asyncio connections pack commands in Python, one join per argument (its sync
    ones use hiredis): a batch's claim calls, with their thousands of keys, spent a third of
    the I/O thread there. This is the sync client's packing (`HiredisRespSerializer.pack`):
    the same bytes (tests/test_redis_client.py), a DataError for what it cannot encode."""
    if isinstance(args[0], str):
        args = tuple(args[0].encode().split()) + args[1:]
    elif b" " in args[0]:
        args = tuple(args[0].split()) + args[1:]
    try:
        return [hiredis.pack_command(args)]
    except TypeError as exc:
        raise DataError(str(exc)) from exc


def _pack_with_hiredis() -> None:
    """Every asyncio connection class (plain, TLS, unix socket, sentinel-managed, cluster
    nodes') inherits AbstractConnection's pack_command: replaced there, once."""
    if aioredis.connection.AbstractConnection.pack_command is not hiredis_pack_command:
        aioredis.connection.AbstractConnection.pack_command = hiredis_pack_command  # type: ignore[method-assign]


def async_redis_client(settings: Settings) -> AsyncRedis:
    """The asyncio client for REDIS_MODE (the dedupe store's), made inside its event loop."""
    _pack_with_hiredis()
    options = connection_options(settings, None)
    mode = resolve_mode(settings)
    if mode is RedisMode.CLUSTER:
        return aioredis.RedisCluster.from_url(settings.redis_url, **options)
    if mode is RedisMode.SENTINEL:
        addresses = sentinel_addresses(settings)
        found = AsyncSentinel(addresses, sentinel_kwargs=_sentinels(settings, options))
        master = settings.redis_sentinel_master
        return cast(
            aioredis.Redis, found.master_for(master, **_data_node_kwargs(settings, options))
        )
    return aioredis.Redis.from_url(settings.redis_url, **options)


def connection_options(settings: Settings, timeout_s: float | None) -> dict[str, Any]:
    """Timeouts, and the TLS files for a `rediss://` URL (redis-py keyword arguments)."""
    timeout = settings.redis_timeout_ms / 1000 if timeout_s is None else timeout_s
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if settings.redis_url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        if settings.redis_tls_ca_file:
            options["ssl_ca_certs"] = settings.redis_tls_ca_file
        if settings.redis_tls_cert_file:
            options["ssl_certfile"] = settings.redis_tls_cert_file
            options["ssl_keyfile"] = settings.redis_tls_key_file
    return options


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    hosts = (settings.redis_sentinels or "").split(",")
    return [(host, int(port)) for host, _, port in (h.rpartition(":") for h in hosts if h)]


def resolve_mode(settings: Settings, timeout_s: float | None = None) -> RedisMode:
    """REDIS_MODE, or for `auto` what the servers say. A wrong password raises (it is a
    setting to fix); an unreachable node gives standalone (the start-up warning says to set
    REDIS_MODE): a cluster unreachable at start-up is then refused by /health until a restart."""
    mode, asked = _detect(settings, timeout_s)
    if asked is not None:
        asked.close()
    return mode


def _detect(settings: Settings, timeout_s: float | None) -> tuple[RedisMode, redis.Redis | None]:
    """The mode, and the standalone client that asked the node (None when none asked)."""
    if settings.redis_mode is not RedisMode.AUTO:
        return settings.redis_mode, None
    if settings.redis_sentinels:
        return RedisMode.SENTINEL, None
    probe = redis.Redis.from_url(settings.redis_url, **connection_options(settings, timeout_s))
    try:
        cluster = _cluster_enabled(probe)
    except redis.AuthenticationError:
        probe.close()
        raise
    except redis.RedisError as exc:
        # info, not warning: the caller's own command fails next and says so (the worker's
        # start-up warning names REDIS_MODE); a tool's one-line error stays one line.
        log.info(
            "REDIS_MODE=auto: cannot ask %s whether it is a cluster (%s); using it as "
            "standalone (set REDIS_MODE to skip the question)",
            mask_secrets(settings.redis_url),
            mask_secrets(str(exc)),
        )
        return RedisMode.STANDALONE, probe
    return (RedisMode.CLUSTER if cluster else RedisMode.STANDALONE), probe


def _cluster_enabled(client: redis.Redis) -> bool:
    # CLUSTER INFO rather than INFO: ACL users of managed services are often denied @dangerous
    # commands (INFO among them), while CLUSTER INFO is allowed and says it in one line.
    try:
        client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
    except redis.ResponseError as exc:
        if "cluster support disabled" in str(exc):
            return False
        return "cluster_enabled:1" in str(client.info("cluster"))
    return True


def _sentinels(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """How to reach the sentinels: the same timeouts, REDIS_SENTINEL_PASSWORD, no TLS."""
    kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    if settings.redis_sentinel_password:
        kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    return kwargs


def _data_node_kwargs(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """What REDIS_URL says about the data nodes behind Sentinel: user, password, db, TLS."""
    parsed: dict[str, Any] = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    kwargs = dict(options)
    for name in ("username", "password", "db"):
        if name in parsed:
            kwargs[name] = parsed[name]
    if settings.redis_url.startswith("rediss://"):
        kwargs["ssl"] = True
    return kwargs
