"""The worker on a 3-broker SASL_SSL (SCRAM-SHA-512) cluster: topics, the worker end to end,
every CLI command through the `KAFKA_*` settings alone, a wrong password, leader failover and
/health's view of partitions without a leader.

The cluster is the session's `kafka_cluster` (tests/conftest.py): devtools/kafka_cluster.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from prometheus_client import REGISTRY

from devtools.devstack import free_port
from devtools.handler_server import HandlerServer
from devtools.kafka import Record, produce, read_topic
from devtools.kafka_cluster import Cluster
from devtools.webhooks import conversation_webhook
from devtools.worker import ROOT, WorkerProcess
from harness.broker_faults import resumed_after, stall_per_fault
from tests.conftest import Stack
from tests.support.cli import run_cli
from wa_worker.core.kafka_connect import culprit
from wa_worker.core.offsets import OffsetReporter, PositionBook
from wa_worker.process.health import Probes
from wa_worker.process.logs import redact
from wa_worker.settings import load_settings


def _names() -> dict[str, str]:
    run = uuid.uuid4().hex[:10]
    return {
        "KAFKA_INBOUND_TOPIC": f"k{run}.in",
        "KAFKA_PROCESSED_TOPIC": f"k{run}.out",
        "KAFKA_DLQ_TOPIC": f"k{run}.dlq",
    }


def test_topics_create_defaults_to_three_replicas_and_two_in_sync(kafka_cluster: Cluster) -> None:
    topics = _names()
    out = run_cli({**kafka_cluster.env(), **topics}, "topics", "create").stdout
    assert out.count("created") == 3
    admin = AdminClient(kafka_cluster.client_config())
    meta = admin.list_topics(timeout=10).topics
    for name in topics.values():
        assert {len(p.replicas) for p in meta[name].partitions.values()} == {3}
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in topics.values()]
    for future in admin.describe_configs(resources).values():
        assert future.result()["min.insync.replicas"].value == "2"


def test_worker_and_every_cli_command_on_sasl_ssl(
    kafka_cluster: Cluster, stack: Stack, tmp_path: Path
) -> None:
    """Only the printed KAFKA_* lines: worker, health, offsets, topics, capture, dlq, publish."""
    topics = _names()
    env = {**kafka_cluster.env(), **topics}
    password = env["KAFKA_SASL_PASSWORD"]
    run_cli(env, "topics", "create")
    config = kafka_cluster.client_config()
    records: list[tuple[bytes | None, bytes]] = [
        (f"w{i}".encode(), conversation_webhook(f"w{i}", f"3163{i % 20:04d}", [f"wamid.c{i}"]))
        for i in range(200)
    ]
    records.append((b"poison", b"not json"))
    produce(kafka_cluster.brokers, topics["KAFKA_INBOUND_TOPIC"], records, config)
    port = free_port()
    group = f"g{uuid.uuid4().hex[:8]}"
    with HandlerServer() as handler:
        worker = WorkerProcess(
            {
                **env,
                "REDIS_URL": stack.redis_url,
                "REDIS_KEY_PREFIX": f"{group}:",
                "KAFKA_GROUP_ID": group,
                "HANDLER_URL": handler.url,
                "HEALTH_PORT": str(port),
                "OFFSETS_REPORT_INTERVAL_S": "1",
                "LOG_LEVEL": "DEBUG",  # the most a log could give away
            },
            tmp_path / "recovery",
            tmp_path / "worker.log",
        ).start()
        try:
            processed = read_topic(
                kafka_cluster.brokers,
                topics["KAFKA_PROCESSED_TOPIC"],
                until=lambda rs: len(rs) >= 200,
                timeout_s=120,
                config=config,
            )
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
            assert health.status_code == 200, health.text
            assert password not in health.text
            # The group-offset reporter commits through the same settings.
            deadline = time.monotonic() + 30
            while not _committed(kafka_cluster, group, topics["KAFKA_INBOUND_TOPIC"], 201):
                assert time.monotonic() < deadline, "offsets never committed"
                time.sleep(0.5)
        finally:
            worker.stop(signal.SIGTERM)
    keys = Counter(r.header("wa-event-key") for r in processed)
    assert set(keys) == {f"wamid.c{i}" for i in range(200)} and max(keys.values()) == 1
    assert password not in worker.log()

    listed = run_cli(env, "dlq", "list", "--json").stdout
    assert "not json" in listed or "invalid" in listed, listed
    capture = tmp_path / "in.jsonl"
    run_cli(env, "capture", str(capture))
    assert len(capture.read_text().splitlines()) == 201
    again = {**env, "KAFKA_INBOUND_TOPIC": topics["KAFKA_DLQ_TOPIC"] + ".again"}
    run_cli(again, "topics", "create")
    run_cli(again, "publish", str(capture))
    for out in (listed, capture.read_text()):
        assert password not in out


def test_a_wrong_password_stops_start_up_with_one_line(
    kafka_cluster: Cluster, stack: Stack
) -> None:
    env = {
        **kafka_cluster.env(password="not-the-password"),
        **_names(),
        "REDIS_URL": stack.redis_url,
        "HEALTH_PORT": "0",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflow"],
        cwd=ROOT,
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("wa-worker:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "KAFKA_SASL_PASSWORD" in lines[0] and "wa-worker" in lines[0], lines
    assert "not-the-password" not in result.stderr
    assert time.monotonic() - started < 30  # not an endless retry


def test_leader_killed_a_new_one_is_elected_and_health_names_leaderless_partitions(
    kafka_cluster: Cluster, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = _names()
    env = {**kafka_cluster.env(), **topics}
    run_cli(env, "topics", "create")
    for name, value in env.items():  # the KAFKA_* pass-through reads the environment
        monkeypatch.setenv(name, value)
    settings = load_settings(redis_url=stack.redis_url)
    probes = Probes(settings, timeout_s=3)
    # New topics reach every broker's metadata a moment after they are created.
    _wait(lambda: probes.run()["kafka"].status == "ok", why=lambda: str(probes.run()["kafka"]))

    inbound = topics["KAFKA_INBOUND_TOPIC"]
    leader = kafka_cluster.leader_of(inbound, 0)
    # A partition only `leader` holds: without it, that partition has no leader at all.
    lonely = topics["KAFKA_PROCESSED_TOPIC"]
    admin = AdminClient(kafka_cluster.client_config())
    admin.delete_topics([lonely])[lonely].result()
    _wait_gone(kafka_cluster, lonely)
    new = NewTopic(lonely, 2, replica_assignment=[[leader], [leader % 3 + 1]])
    admin.create_topics([new])[lonely].result()
    kafka_cluster.wait_for_leaders([lonely])
    try:
        kafka_cluster.kill(leader)
        took = kafka_cluster.wait_for_leaders([inbound], timeout_s=30)
        # Each call asks a broker picked at random, and one still applying the metadata log
        # (a loaded machine) may name the dead leader a moment longer.
        deadline = time.monotonic() + 30
        while kafka_cluster.leader_of(inbound, 0) in (leader, -1):
            assert time.monotonic() < deadline, "no new leader for the inbound partition 0"
            time.sleep(0.5)
        print(f"inbound partition 0: new leader after {took:.1f}s")
        deadline = time.monotonic() + 30
        while (check := probes.run()["kafka"]).status == "ok":
            assert time.monotonic() < deadline, "health never saw the partition without leader"
            time.sleep(0.5)
        assert check.error is not None and f"{lonely}[0]" in check.error, check
        assert f"{lonely}[1]" not in check.error and inbound not in check.error
    finally:
        kafka_cluster.start_node(leader)
    kafka_cluster.wait_for_leaders([inbound, lonely])
    deadline = time.monotonic() + 30
    while probes.run()["kafka"].status != "ok":
        assert time.monotonic() < deadline
        time.sleep(0.5)


def _wait_gone(cluster: Cluster, topic: str) -> None:
    admin = AdminClient(cluster.client_config())
    while topic in admin.list_topics(timeout=5).topics:
        time.sleep(0.2)


def _committed(cluster: Cluster, group: str, topic: str, total: int) -> bool:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**cluster.client_config(), "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(3)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10)) >= total
    finally:
        consumer.close()


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}


def test_kafka_passwords_count_as_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw-1234567")
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD", "kp-7654321")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "wa-user")
    settings = load_settings()
    assert {"pw-1234567", "kp-7654321"} <= set(settings.secrets())
    assert "wa-user" not in settings.secrets()
    line = redact("sasl.password=pw-1234567 ssl.key.password=kp-7654321", settings.secrets())
    assert "pw-1234567" not in line and "kp-7654321" not in line


def test_only_the_brokers_refusal_names_a_setting() -> None:
    variables = {"KAFKA_SASL_PASSWORD": "x", "KAFKA_SSL_CA_LOCATION": "/ca.pem"}
    refused = KafkaError(
        KafkaError._AUTHENTICATION,
        "SASL authentication error: Authentication failed during authentication due to "
        "invalid credentials with SASL mechanism SCRAM-SHA-512",
    )
    assert culprit(refused, variables) == "KAFKA_SASL_PASSWORD"
    cut = KafkaError(
        KafkaError._AUTHENTICATION,
        "SASL authentication error: SaslAuthenticateRequest failed: "
        "Local: Broker transport failure",
    )
    assert culprit(cut, variables) is None  # a broker restarting is no wrong password
    untrusted = KafkaError(KafkaError._SSL, "SSL handshake failed: certificate verify failed")
    assert culprit(untrusted, variables) == "KAFKA_SSL_CA_LOCATION"


def test_the_stall_is_the_longest_gap_in_output_after_each_fault() -> None:
    def at(seconds: float) -> Record:
        return Record(None, b"", {}, 0, 0, int(seconds * 1000))

    output = [at(t) for t in (1.0, 1.1, 1.2, 5.2, 5.3, 6.0, 12.0, 12.1)]
    stalls = stall_per_fault(output, [("first", 1.15), ("second", 5.5)])
    assert [(what, round(s or 0, 2)) for what, s in stalls] == [("first", 4.0), ("second", 6.0)]
    assert [round(r or 0, 2) for r in resumed_after(output, [5.0, 11.0])] == [0.2, 1.0]


def test_a_fault_after_the_input_ended_and_was_all_written_has_no_stall() -> None:
    def at(seconds: float) -> Record:
        return Record(None, b"", {}, 0, 0, int(seconds * 1000))

    output = [at(t) for t in (1.0, 1.1, 4.0)]
    faults = [("first", 1.05), ("second", 20.0)]
    stalls = stall_per_fault(output, faults, input_ended=3.9)
    assert [(what, None if s is None else round(s, 2)) for what, s in stalls] == [
        ("first", 2.9),
        ("second", None),
    ]
    # Input still flowing at the fault and no output after it: the worker did stall.
    assert stall_per_fault(output, faults, input_ended=25.0)[1] == ("second", 90.0)
    # Output only after the window: a stall longer than the window, not "nothing to stall".
    late = [*output, at(200.0)]
    assert stall_per_fault(late, faults, input_ended=3.9)[1] == ("second", 90.0)


def _lag(topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "wa_consumer_lag_messages", {"topic": topic, "partition": str(partition)}
    )


def test_group_commits_and_the_lag_gauge_survive_a_coordinator_move(
    kafka_cluster: Cluster,
) -> None:
    topic = _names()["KAFKA_INBOUND_TOPIC"]
    kafka_cluster.create_topics([topic])
    produce(
        kafka_cluster.brokers,
        topic,
        [(f"k{i}".encode(), b"v") for i in range(30)],
        config=kafka_cluster.client_config(),
    )
    group = f"g{uuid.uuid4().hex[:10]}"
    book = PositionBook()
    for partition in range(3):
        book.read((topic, partition), 0)
        book.snapshotted((topic, partition), 0)
    reporter = OffsetReporter(book, kafka_cluster.client_config(), group, 0.3).start()
    admin = AdminClient(kafka_cluster.client_config())
    coordinator = None
    try:
        # The group exists (its coordinator is known) once the first commit went through.
        _wait(lambda: _committed_to(kafka_cluster, group, topic) == [0, 0, 0])
        [described] = admin.describe_consumer_groups([group]).values()
        coordinator = int(described.result().coordinator.id)
        kafka_cluster.kill(coordinator)
        # The worker reads on while the group's coordinator moves to another broker.
        for partition in range(3):
            book.read((topic, partition), 1)
            book.snapshotted((topic, partition), 1)
        _wait(lambda: _committed_to(kafka_cluster, group, topic) == [1, 1, 1], timeout_s=90)

        def lags_match() -> bool:
            expected = [max(0, high - 1) for high in _watermarks(kafka_cluster, topic)]
            return [_lag(topic, p) for p in range(3)] == expected

        _wait(lags_match, timeout_s=60, why=lambda: f"lag {[_lag(topic, p) for p in range(3)]}")
        [moved] = admin.describe_consumer_groups([group]).values()
        assert int(moved.result().coordinator.id) != coordinator
    finally:
        reporter.stop()
        if coordinator is not None:
            kafka_cluster.start_node(coordinator)


def _wait(
    condition: Callable[[], bool],
    timeout_s: float = 30,
    why: Callable[[], str] = lambda: "not within the timeout",
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, why()
        time.sleep(0.3)


def _committed_to(cluster: Cluster, group: str, topic: str) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**cluster.client_config(), "group.id": group, "log_level": 0})
    try:
        parts = [TopicPartition(topic, p) for p in range(3)]
        return [tp.offset for tp in consumer.committed(parts, timeout=10)]
    except Exception:  # noqa: BLE001  (no coordinator answers mid-move)
        return []
    finally:
        consumer.close()


def _watermarks(cluster: Cluster, topic: str) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**cluster.client_config(), "group.id": "watermarks"})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(3)
        ]
    finally:
        consumer.close()
