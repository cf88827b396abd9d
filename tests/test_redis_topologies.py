"""Redis as teams run it, on real servers the project starts (`devtools.redis_topologies`):
the client for each REDIS_MODE, a Sentinel failover followed without a restart, TLS with a
client certificate and an ACL user, and the start-up and /health refusals that say why."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from devtools.handler_server import HandlerServer
from devtools.kafka import produce, read_topic
from devtools.redis_topologies import (
    Topology,
    sentinel_primary,
    start_redis_cluster,
    start_redis_tls,
)
from devtools.webhooks import conversation_webhook
from devtools.worker import WorkerProcess
from tests.conftest import Stack, Topics
from wa_worker.core import redis_topology
from wa_worker.core.dedupe import ClaimRequest, check_dedupe_works, dedupe_keys, redis_store
from wa_worker.core.redis_client import redis_client, resolve_mode
from wa_worker.errors import ConfigError
from wa_worker.models.completions import ClaimStatus
from wa_worker.process import logs
from wa_worker.process.health import Probes
from wa_worker.process.startup import require_working_redis
from wa_worker.settings import RedisMode, Settings, load_settings


def _settings(env: dict[str, str], **overrides: str) -> Settings:
    merged = {**env, **overrides}
    return load_settings(**{k.lower(): v for k, v in merged.items()})


def _startup_line(settings: Settings, capsys: pytest.CaptureFixture[str]) -> str:
    """The one line `require_working_redis` stops start-up with (exit code 2)."""
    with pytest.raises(SystemExit) as stopped:
        require_working_redis(settings)
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    return line


# Settings and mode


def test_topology_settings_are_checked_at_start_up_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="REDIS_MODE=sentinel needs REDIS_SENTINELS"):
        load_settings(redis_mode="sentinel")
    with pytest.raises(ConfigError, match="REDIS_SENTINELS: 'nope' is not host:port"):
        load_settings(redis_sentinels="nope")
    with pytest.raises(ConfigError, match="REDIS_TLS_CA_FILE: no such file"):
        load_settings(redis_url="rediss://h:6380/0", redis_tls_ca_file=str(tmp_path / "ca.crt"))
    cert = tmp_path / "client.crt"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together"):
        load_settings(redis_url="rediss://h:6380/0", redis_tls_cert_file=str(cert))
    with pytest.raises(ConfigError, match="REDIS_URL is not rediss://"):
        load_settings(redis_tls_ca_file=str(cert))
    with pytest.raises(ConfigError, match="REDIS_MODE"):
        load_settings(redis_mode="replicated")


def test_redis_passwords_are_secrets_every_log_line_masks() -> None:
    settings = load_settings(
        redis_url="rediss://wa:s3cr%40t-pw@h:6380/0", redis_sentinel_password="sentinel-pw"
    )
    assert set(settings.secrets()) == {"s3cr@t-pw", "sentinel-pw"}
    line = logs.redact("AUTH failed for s3cr@t-pw and sentinel-pw", settings.secrets())
    assert "s3cr@t-pw" not in line and "sentinel-pw" not in line


def test_auto_mode_asks_the_node(stack: Stack, redis_cluster_url: str) -> None:
    assert resolve_mode(load_settings(redis_url=stack.redis_url)) is RedisMode.STANDALONE
    assert resolve_mode(load_settings(redis_url=redis_cluster_url)) is RedisMode.CLUSTER
    client = redis_client(load_settings(redis_url=redis_cluster_url))
    try:
        assert isinstance(client, redis.RedisCluster)
        # keys on every node: MOVED is followed, whichever node the URL names
        for i in range(20):
            client.set(f"t{uuid.uuid4().hex[:8]}:{i}", "1", px=10_000)
    finally:
        client.close()


def test_auto_mode_without_an_answer_is_standalone_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = load_settings(redis_url="redis://:pw-hidden@127.0.0.1:1/0", redis_timeout_ms=200)
    with caplog.at_level(logging.INFO):
        assert resolve_mode(settings) is RedisMode.STANDALONE
    assert "set REDIS_MODE" in caplog.text and "pw-hidden" not in caplog.text


# Health


def test_health_shows_the_mode_and_what_it_uses(
    stack: Stack, redis_sentinel_env: dict[str, str]
) -> None:
    standalone = Probes(load_settings(kafka_brokers=stack.brokers, redis_url=stack.redis_url))
    assert standalone.redis_dedupe() == {"mode": "standalone"}
    sentinel = Probes(_settings(redis_sentinel_env, KAFKA_BROKERS=stack.brokers))
    details = sentinel.redis_dedupe()
    assert details is not None and details["mode"] == "sentinel", details
    assert details["primary"].startswith("127.0.0.1:"), details
    checks = sentinel.run()
    assert checks["redis"].mode == "sentinel" and checks["redis"].status == "ok", checks


def test_health_fails_when_sentinel_names_no_primary(redis_sentinel_env: dict[str, str]) -> None:
    probes = Probes(_settings(redis_sentinel_env, REDIS_SENTINEL_MASTER="no-such-master"))
    check = probes.run()["redis"]
    assert check.status == "error" and check.mode == "sentinel", check
    assert check.error is not None and "no reachable primary" in check.error, check


def test_health_fails_when_the_cluster_loses_a_primary_without_replica(tmp_path: Path) -> None:
    cluster = start_redis_cluster(tmp_path, replicas=0, name="cluster-no-replicas")
    try:
        client = redis_client(_settings(cluster.env))
        healthy = redis_topology.inspect(client)
        assert healthy.problem is None and len(healthy.nodes) == 3, healthy
        cluster.nodes["node-3"].kill()
        deadline = time.monotonic() + 30
        while (seen := redis_topology.inspect(client)).problem is None:
            assert time.monotonic() < deadline, "the cluster never reported its lost slots"
            time.sleep(0.3)
        check = Probes(_settings(cluster.env)).run()["redis"]
        assert check.status == "error" and check.mode == "cluster", check
        assert check.nodes is not None and len(check.nodes) == 3, check
        assert check.error is not None and "Redis cluster:" in check.error, check
        assert "cluster_state:fail" in check.error or "does not answer" in check.error, check
        assert seen.mode is RedisMode.CLUSTER
        client.close()
    finally:
        cluster.stop()


# Start-up refusals


def test_start_up_stops_on_a_read_only_replica(
    redis_sentinel: Topology, capsys: pytest.CaptureFixture[str]
) -> None:
    primary = sentinel_primary(redis_sentinel)
    replica = next(
        n
        for k, n in redis_sentinel.nodes.items()
        if k in ("primary", "replica") and n is not primary
    )
    line = _startup_line(load_settings(redis_url=f"redis://{replica.address}/0"), capsys)
    assert line.startswith(f"wa-worker: REDIS_URL: Redis at redis://{replica.address}/0"), line
    assert "read only replica" in line, line


def test_start_up_stops_on_a_wrong_password_naming_redis_url_masked(
    stack: Stack, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    user = f"wa-{uuid.uuid4().hex[:8]}"
    redis_client.execute_command("ACL", "SETUSER", user, "on", ">right-pw", "~*", "+@all")
    try:
        where = urlsplit(stack.redis_url)
        url = f"redis://{user}:wrong-pw-123@{where.hostname}:{where.port}/0"
        line = _startup_line(load_settings(redis_url=url), capsys)
    finally:
        redis_client.execute_command("ACL", "DELUSER", user)
    assert line.startswith(f"wa-worker: REDIS_URL: Redis at redis://{user}:***@"), line
    assert "refuses the user or password" in line and "wrong-pw-123" not in line, line


# TLS and ACL


def test_tls_with_a_client_certificate_and_an_acl_user(
    redis_tls_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(redis_tls_env, REDIS_MODE="auto")  # the question asked over TLS too
    password = urlsplit(settings.redis_url).password
    assert password and settings.redis_url.startswith("rediss://wa-worker:")
    client = redis_client(settings)
    try:
        check_dedupe_works(client, dedupe_keys(settings))
        assert client.acl_whoami() == "wa-worker"
    finally:
        client.close()
    require_working_redis(settings)  # passes: no line, no exit
    # Without the client certificate the server refuses the handshake: no way in.
    no_cert = _settings(redis_tls_env, REDIS_TLS_CERT_FILE="", REDIS_TLS_KEY_FILE="")
    bare = redis_client(no_cert)
    with pytest.raises(redis.ConnectionError):
        bare.ping()
    bare.close()
    # A CA that does not vouch for the server stops start-up naming REDIS_TLS_CA_FILE.
    wrong_ca = _settings(redis_tls_env, REDIS_TLS_CA_FILE="/etc/ssl/certs/ca-certificates.crt")
    line = _startup_line(wrong_ca, capsys)
    assert line.startswith("wa-worker: REDIS_TLS_CA_FILE: Redis at rediss://wa-worker:***@"), line
    assert password not in line
    check = Probes(settings).run()["redis"]
    assert check.status == "ok" and check.mode == "standalone", check


# Sentinel failover


def test_a_sentinel_failover_is_followed_without_a_restart(
    redis_sentinel: Topology, redis_sentinel_env: dict[str, str], redis_prefix: str
) -> None:
    settings = _settings(redis_sentinel_env, REDIS_KEY_PREFIX=redis_prefix, REDIS_TIMEOUT_MS="1000")
    before = sentinel_primary(redis_sentinel)

    async def run() -> tuple[list[ClaimStatus], list[ClaimStatus], int]:
        store = redis_store(settings)  # one store, as the worker keeps it
        try:
            first = await store.run_batch([ClaimRequest(f"e{i}", "a", 60_000) for i in range(50)])
            await asyncio.to_thread(_failover, redis_sentinel, before.port)
            failed, deadline = 0, time.monotonic() + 30
            while True:  # the worker's runtime retries a failed batch the same way
                try:
                    again = await store.run_batch(
                        [ClaimRequest(f"e{i}", "b", 60_000) for i in range(50)]
                    )
                    break
                except redis.RedisError:
                    failed += 1
                    assert time.monotonic() < deadline, "no batch worked after the failover"
                    await asyncio.sleep(0.2)
            return [r.status for r in first], [r.status for r in again], failed
        finally:
            await store.aclose()

    first, again, failed = asyncio.run(run())
    assert first == [ClaimStatus.CLAIMED] * 50
    # The claims made before the failover were replicated: another token finds them busy.
    assert again == [ClaimStatus.BUSY] * 50
    assert failed <= 2, failed  # the connection to the old primary fails once, then follows
    assert sentinel_primary(redis_sentinel).port != before.port


def _failover(topology: Topology, old_port: int) -> None:
    """WAIT for the replica, SENTINEL FAILOVER, then wait until the sentinels name the other."""
    old = redis.Redis(port=old_port)
    old.execute_command("WAIT", 1, 2000)
    old.close()
    sentinel = next(n for k, n in topology.nodes.items() if k.startswith("sentinel"))
    admin = redis.Redis(port=sentinel.port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                admin.execute_command("SENTINEL", "FAILOVER", "mymaster")
                break
            except redis.ResponseError:  # INPROG or NOGOODSLAVE right after a former failover
                assert time.monotonic() < deadline
                time.sleep(0.5)
        while sentinel_primary(topology).port == old_port:
            assert time.monotonic() < deadline, "the sentinels never promoted the replica"
            time.sleep(0.2)
    finally:
        admin.close()


# devstack


def test_a_topology_in_a_relative_folder_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # each node runs in its own folder: paths must be absolute
    topology = start_redis_tls(Path("relative"))
    try:
        client = redis_client(_settings(topology.env))
        assert client.ping()
        client.close()
    finally:
        topology.stop()
    assert not topology.nodes["server"].running()


# The worker on a cluster


def test_the_worker_on_a_cluster_processes_every_unique_event_once(
    stack: Stack,
    topics: Topics,
    redis_cluster_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    records: list[tuple[bytes | None, bytes]] = []
    unique: set[str] = set()
    for i in range(60):
        wamids = [f"wamid.c{i}.{j}" for j in range(2)]
        unique.update(wamids)
        records.append(
            (f"w{i}".encode(), conversation_webhook(f"w{i}", f"3162{i % 9:04d}", wamids))
        )
        if i % 6 == 0:  # Meta redelivers
            records.append(
                (f"w{i}r".encode(), conversation_webhook(f"w{i}r", f"3162{i % 9:04d}", wamids))
            )
    produce(stack.brokers, topics.inbound, records)
    with HandlerServer() as handler:
        worker = start_worker(HANDLER_URL=handler.url, REDIS_URL=redis_cluster_url)
        processed = read_topic(
            stack.brokers,
            topics.processed,
            until=lambda rs: len(rs) >= len(unique) or not worker.running(),
            timeout_s=120,
        )
        assert worker.running(), worker.log()
    keys = Counter(r.header("wa-event-key") for r in processed)
    assert set(keys) == unique and max(keys.values()) == 1, keys
