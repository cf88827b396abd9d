"""What on-call sees, on the real stack: /health probes, /metrics counts, SIGTERM drain."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools import devstack
from devtools.devstack import free_port
from devtools.handler_server import HandlerServer, Reply
from devtools.kafka import group_caught_up, produce, read_topic
from devtools.webhooks import conversation_webhook
from devtools.worker import WorkerProcess
from tests.conftest import Stack, Topics
from wa_worker.core.librdkafka_log import RepeatFilter
from wa_worker.core.shutdown import Drain
from wa_worker.process import health
from wa_worker.settings import load_settings


def _wait_for(url: str, timeout_s: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.get(url, timeout=10)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class OwnRedis:
    """A password-protected Redis server (the project's devstack, in this test's folder) that
    the test may stop and start again on the same port."""

    PASSWORD = "s3cret-pass"

    def __init__(self, workdir: Path) -> None:
        _, self.service = devstack.services(workdir)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://:{self.PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        devstack.start_redis(self.port, self.service, ("--requirepass", self.PASSWORD))

    def stop(self) -> None:
        self.service.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


class OwnKafka:
    """A Kafka broker of this test's own (the project's devstack), which it may stop."""

    def __init__(self, workdir: Path) -> None:
        self.service, _ = devstack.services(workdir)
        self.brokers = f"127.0.0.1:{devstack.start_kafka(0, service=self.service)}"

    def stop(self) -> None:
        self.service.stop()


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[OwnKafka]:
    broker = OwnKafka(tmp_path / "own-kafka")
    yield broker
    broker.stop()


def test_health_reports_each_dependency_and_503_names_redis_when_it_stops(
    stack: Stack,
    topics: Topics,
    own_redis: OwnRedis,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    port = free_port()
    with HandlerServer() as handler:
        health_url = handler.url.replace("/handle", "/healthz")
        worker = start_worker(
            HEALTH_PORT=str(port),
            REDIS_URL=own_redis.url,
            HANDLER_URL=handler.url,
            HANDLER_HEALTH_URL=health_url,
        )
        base = f"http://127.0.0.1:{port}"
        response = _wait_for(f"{base}/health")
        body = response.json()
        assert response.status_code == 200, body
        assert body["status"] == "ok"
        assert set(body["checks"]) == {"kafka", "redis", "handler"}
        assert all(c["status"] == "ok" and "latencyMs" in c for c in body["checks"].values())
        assert body["worker"]["running"] is True
        assert set(body["worker"]["metrics"]) == {
            "processed",
            "failed",
            "retried",
            "deadLettered",
            "duplicates",
        }
        assert body["uptime"] >= 0 and body["timestamp"].endswith("Z")
        assert httpx.get(f"{base}/livez").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200

        own_redis.stop()
        time.sleep(health.RESULT_TTL_S)  # the last result is shared this long
        response = httpx.get(f"{base}/health", timeout=10)
        body = response.json()
        assert response.status_code == 503
        assert body["status"] == "error"
        assert body["checks"]["redis"]["status"] == "error"
        assert body["checks"]["redis"]["error"]
        assert body["checks"]["kafka"]["status"] == "ok"
        assert "s3cret-pass" not in response.text  # no secret leaks into the report
        assert httpx.get(f"{base}/readyz").status_code == 503
        assert httpx.get(f"{base}/livez").status_code == 200

        own_redis.start()
        time.sleep(health.RESULT_TTL_S)
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        assert worker.running()


def test_health_reports_the_handler_status_code(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    port = free_port()
    start_worker(
        HEALTH_PORT=str(port),
        HANDLER_URL="http://127.0.0.1:9/x",
        HANDLER_HEALTH_URL=f"{stack.redis_url.replace('redis', 'http', 1)}",
    )
    response = _wait_for(f"http://127.0.0.1:{port}/health")
    assert response.status_code == 503
    assert response.json()["checks"]["handler"]["status"] == "error"


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_metrics_count_what_was_sent(
    stack: Stack,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
) -> None:
    records = [
        (
            f"w{i}".encode(),
            conversation_webhook(f"w{i}", f"3165{i:04d}", [f"wamid.m{i}.0", f"wamid.m{i}.1"]),
        )
        for i in range(20)
    ]
    records += [(b"again", conversation_webhook("again", "31650000", ["wamid.m0.0"]))] * 3
    records += [(b"bad", b"{not json")] * 2
    produce(stack.brokers, topics.inbound, records)
    port = free_port()

    def plan(event: dict[str, str], attempt: int) -> Reply:
        failing = event["event_key"] == "wamid.m5.1" and attempt == 1
        return Reply(503) if failing else Reply(200, {})

    with HandlerServer(plan) as handler:
        start_worker(HEALTH_PORT=str(port), HANDLER_URL=handler.url, RETRY_DELAY_MS="100")
        read_topic(stack.brokers, topics.processed, until=lambda rs: len(rs) >= 40, timeout_s=60)
        read_topic(stack.brokers, topics.dlq, until=lambda rs: len(rs) >= 2, timeout_s=30)
        time.sleep(0.5)
        text = _wait_for(f"http://127.0.0.1:{port}/metrics").text
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
    assert _metric(text, "wa_events_processed_total") == 40
    assert _metric(text, "wa_events_duplicates_total") == 3
    assert _metric(text, 'wa_events_dead_lettered_total{error_class="invalid_json"}') == 2
    assert _metric(text, "wa_parse_errors_total") == 2
    assert _metric(text, "wa_events_retried_total") == 1
    assert _metric(text, "wa_handler_latency_seconds_count") == 41
    # Unparseable records have no envelope timestamp: only the 40 events are timed.
    assert _metric(text, "wa_end_to_end_latency_seconds_count") == 40
    assert _metric(text, "wa_consumer_lag_messages") == 0
    assert "wa_redis_roundtrip_seconds_bucket" in text
    assert group_caught_up(stack.brokers, topics.inbound, worker_env["KAFKA_GROUP_ID"], 3)
    assert health["worker"]["metrics"] == {
        "processed": 40,
        "failed": 1,
        "retried": 1,
        "deadLettered": 2,
        "duplicates": 3,
    }


def test_sigterm_drains_and_exits_zero_and_nothing_is_lost(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    conversations, per_conversation = 40, 5
    produce(
        stack.brokers,
        topics.inbound,
        [
            (
                f"w{c}.{j}".encode(),
                conversation_webhook(f"w{c}.{j}", f"3167{c:04d}", [f"wamid.d{c}.{j}"]),
            )
            for j in range(per_conversation)
            for c in range(conversations)
        ],
    )
    expected = {f"wamid.d{c}.{j}" for c in range(conversations) for j in range(per_conversation)}

    # Slow calls, and some retries pending at the time of the signal.
    def plan(event: dict[str, str], attempt: int) -> Reply:
        failing = event["event_key"].endswith(".2") and attempt == 1
        return Reply(503) if failing else Reply(200, {}, delay_s=0.3)

    with HandlerServer(plan) as handler:
        worker = start_worker(
            HANDLER_URL=handler.url,
            RETRY_DELAY_MS="3000",
            RETRY_JITTER="0",
            DRAIN_TIMEOUT_S="10",
            HANDLER_CONCURRENCY="8",
        )
        deadline = time.monotonic() + 60
        while len(handler.calls) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        signalled = time.monotonic()
        code = worker.stop(signal.SIGTERM, timeout_s=30)
        took = time.monotonic() - signalled
        assert code == 0, worker.log()[-3000:]
        assert took < 10 + 5, took
        assert "draining" in worker.log()
        first_run = {r.header("wa-event-key") for r in read_topic(stack.brokers, topics.processed)}
        assert 0 < len(first_run) < len(expected)
        worker.start()
        processed = read_topic(
            stack.brokers,
            topics.processed,
            until=lambda rs: len(rs) >= len(expected),
            timeout_s=120,
        )
    keys = Counter(r.header("wa-event-key") for r in processed)
    assert set(keys) == expected  # none lost
    assert max(keys.values()) == 1  # and a drained run leaves nothing to repeat
    assert read_topic(stack.brokers, topics.dlq) == []
    print(
        f"\nSIGTERM: exit 0 after {took:.1f}s; {len(first_run)} events before, "
        f"{len(expected) - len(first_run)} after the restart; duplicates 0"
    )


def _two_free_ports() -> int:
    """A port P with P + 1 free too (process N serves on HEALTH_PORT + N)."""
    import socket

    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def test_two_processes_count_every_event_once_between_them(
    stack: Stack, topics: Topics, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    """A two-process cluster on one host: health ports HEALTH_PORT + process id, and the
    processes' counters add up to what was sent (nothing lost or counted twice)."""
    records = [
        (
            f"w{i}".encode(),
            conversation_webhook(f"w{i}", f"3166{i:04d}", [f"wamid.c{i}.0", f"wamid.c{i}.1"]),
        )
        for i in range(60)
    ]
    records += [(b"again", conversation_webhook("again", "31660000", ["wamid.c0.0"]))] * 4
    produce(stack.brokers, topics.inbound, records)
    health = _two_free_ports()
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    processes = [
        WorkerProcess(
            {**worker_env, "HEALTH_PORT": str(health)},
            tmp_path / "recovery",
            tmp_path / f"process-{i}.log",
            cluster_args=("-i", str(i), "-a", addresses),
            recovery_partitions=2,
        )
        for i in range(2)
    ]
    processes[0].start()
    processes[1].start()
    try:
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= 120, timeout_s=90
        )
        time.sleep(1)
        texts = [_wait_for(f"http://127.0.0.1:{health + i}/metrics").text for i in range(2)]
    finally:
        # A cluster drains together: signal every process, then wait.
        for process in processes:
            process.send(signal.SIGTERM)
        codes = [process.wait(timeout_s=30) for process in processes]
    assert codes == [0, 0], [p.log()[-2000:] for p in processes]
    assert Counter(r.header("wa-event-key") for r in processed).most_common(1)[0][1] == 1
    assert len(processed) == 120
    per_process = [_metric(t, "wa_events_processed_total") for t in texts]
    assert sum(per_process) == 120 and all(n > 0 for n in per_process), per_process
    assert sum(_metric(t, "wa_events_duplicates_total") for t in texts) == 4


def test_input_waits_while_the_process_holds_max_events_in_progress(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    # 1,500 events over 500 conversations, a handler slower than the input: without the limit
    # the source would read them all into the conversations' queues at once.
    records = [
        (
            f"w{i}".encode(),
            conversation_webhook(
                f"w{i}", f"3166{i % 500:04d}", [f"wamid.bp{i}.{j}" for j in (0, 1)]
            ),
        )
        for i in range(750)
    ]
    produce(stack.brokers, topics.inbound, records)
    port = free_port()
    limit, batch = 200, 20  # input can overshoot by one batch per partition (3 × 20 × 2 events)
    with HandlerServer(lambda event, attempt: Reply(200, {}, delay_s=0.02)) as handler:
        start_worker(
            HEALTH_PORT=str(port),
            HANDLER_URL=handler.url,
            HANDLER_CONCURRENCY="16",
            MAX_EVENTS_IN_PROGRESS=str(limit),
            KAFKA_BATCH_SIZE=str(batch),
        )
        _wait_for(f"http://127.0.0.1:{port}/livez")
        seen: list[float] = []
        deadline = time.monotonic() + 120
        while len(handler.calls) < 1500 and time.monotonic() < deadline:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            seen.append(_metric(text, "wa_events_in_progress"))
            time.sleep(0.05)
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= 1500, timeout_s=60
        )
    assert len({r.header("wa-event-key") for r in processed}) == 1500
    assert max(seen) >= limit / 2  # the limit was reached, so it was tested
    assert max(seen) <= limit + 3 * batch * 2


def _wait_until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _slow_conversations(stack: Stack, topics: Topics, count: int, tag: str) -> set[str]:
    produce(
        stack.brokers,
        topics.inbound,
        [
            (f"w{i}".encode(), conversation_webhook(f"w{i}", f"3168{i:04d}", [f"wamid.{tag}{i}"]))
            for i in range(count)
        ],
    )
    return {f"wamid.{tag}{i}" for i in range(count)}


def test_a_second_sigterm_stops_at_once_with_one_line(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    _slow_conversations(stack, topics, 5, "s")
    with HandlerServer(lambda event, attempt: Reply(200, {}, delay_s=8)) as handler:
        worker = start_worker(
            HANDLER_URL=handler.url, DRAIN_TIMEOUT_S="60", HANDLER_TIMEOUT_MS="30000"
        )
        _wait_until(lambda: len(handler.calls) >= 1)
        worker.send(signal.SIGTERM)
        _wait_until(lambda: "draining" in worker.log(), 20)
        signalled = time.monotonic()
        worker.send(signal.SIGTERM)
        code = worker.wait(timeout_s=20)
        took = time.monotonic() - signalled
    after = worker.log().split("draining", 1)[1].splitlines()[1:]
    assert code == 128 + signal.SIGTERM, worker.log()[-3000:]
    assert took < 5, took
    assert len(after) == 1 and "second SIGTERM: aborting without drain" in after[0], after
    assert "Traceback" not in worker.log() and "panicked" not in worker.log()


def test_a_drain_that_times_out_says_how_many_calls_it_abandons(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    expected = _slow_conversations(stack, topics, 4, "a")
    with HandlerServer(lambda event, attempt: Reply(200, {}, delay_s=10)) as handler:
        worker = start_worker(
            HANDLER_URL=handler.url,
            DRAIN_TIMEOUT_S="1",
            HANDLER_TIMEOUT_MS="30000",
            CLAIM_LEASE_MS="1000",
        )
        _wait_until(lambda: len(handler.calls) >= 4)
        code = worker.stop(signal.SIGTERM, timeout_s=30)
        assert code == 0, worker.log()[-3000:]
        assert "DRAIN_TIMEOUT_S (1s) ran out: abandoning 4 unfinished calls" in worker.log()
        assert read_topic(stack.brokers, topics.processed) == []
        handler.plan = lambda event, attempt: Reply(200, {})
        worker.start()  # as the line says: the abandoned events are handled again
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= 4, timeout_s=90
        )
    assert {r.header("wa-event-key") for r in processed} == expected


def test_health_answers_every_request_within_the_probe_timeout_while_kafka_is_down(
    stack: Stack, topics: Topics
) -> None:
    """Ten requests at once against a Kafka port that refuses connections: each answers 503
    within the probe timeout (they used to queue for one probe thread: 2, 4, ... 10 s)."""
    settings = load_settings(
        kafka_brokers=f"127.0.0.1:{free_port()}",
        redis_url=stack.redis_url,
        kafka_inbound_topic=topics.inbound,
        health_port=0,
    )
    timeout_s, port = 2.0, free_port()
    server = health.serve(health.HealthApp(health.Probes(settings, timeout_s), Drain()), port)

    # One client: each httpx.get() builds an SSL context first (~0.1 s, more when ten do).
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=20))

    def ask(_: int) -> tuple[int, dict[str, Any], float]:
        started = time.monotonic()
        response = client.get(f"http://127.0.0.1:{port}/health")
        return response.status_code, response.json(), time.monotonic() - started

    try:
        for _burst in range(2):  # the second one after the shared result has expired
            with ThreadPoolExecutor(10) as pool:
                answers = list(pool.map(ask, range(10)))
            took = sorted(round(t, 2) for _, _, t in answers)
            assert max(took) < timeout_s + 1.0, took
            for status, body, _ in answers:
                assert status == 503
                assert body["checks"]["kafka"]["status"] == "error"
                assert body["checks"]["redis"]["status"] == "ok"
            time.sleep(health.RESULT_TTL_S)
    finally:
        client.close()
        server.shutdown()
    print(f"\n/health x10 with Kafka down: answered after {took[0]}..{took[-1]} s")


def test_concurrent_health_requests_share_one_probe_run() -> None:
    runs: list[float] = []
    release = threading.Event()

    def probe() -> None:
        runs.append(time.monotonic())
        release.wait(5)

    shared = health.SharedProbe("slow", probe, timeout_s=0.3, ttl_s=60)
    deadline = time.monotonic() + 0.3
    waiting = [shared.result(shared.begin(), deadline) for _ in range(5)]
    assert [c.error for c in waiting] == ["no answer within 0.3s"] * 5  # bounded, not queued
    release.set()
    time.sleep(0.1)
    later = [shared.result(shared.begin(), time.monotonic() + 1) for _ in range(5)]
    assert len(runs) == 1 and all(c.status == "ok" for c in later)  # one run, shared


def test_librdkafka_lines_are_json_and_collapsed_during_a_broker_outage(
    own_kafka: OwnKafka, stack: Stack, tmp_path: Path, redis_prefix: str
) -> None:
    """A broker outage used to print librdkafka's own `%3|…|FAIL|…` lines, dozens a second and
    outside LOG_FORMAT=json: now they are JSON lines of logger `librdkafka`, one per kind of
    line every 30 s."""
    names = Topics("out.inbound", "out.processed", "out.dlq")
    brokers = own_kafka.brokers
    devstack.create_topics(brokers, [names.inbound, names.processed, names.dlq], partitions=3)
    port = free_port()
    worker = WorkerProcess(
        {
            "KAFKA_BROKERS": brokers,
            "REDIS_URL": stack.redis_url,
            "REDIS_KEY_PREFIX": redis_prefix,
            "HEALTH_PORT": str(port),
            "LOG_FORMAT": "json",
            "OFFSETS_REPORT_INTERVAL_S": "1",
            **names.env(),
        },
        tmp_path / "recovery",
        tmp_path / "worker.log",
    )
    worker.start()
    try:
        produce(brokers, names.inbound, [(b"w", conversation_webhook("w", "31690001", ["m"]))])
        read_topic(brokers, names.processed, until=lambda rs: len(rs) >= 1, timeout_s=60)
        own_kafka.stop()  # the outage
        outage_s = 15
        deadline = time.monotonic() + outage_s
        while time.monotonic() < deadline:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)  # its probe's client too
            time.sleep(1)
        assert worker.running(), worker.log()[-3000:]
    finally:
        worker.kill()
    lines = worker.log().splitlines()
    not_json = [line for line in lines if not _is_json_object(line)]
    assert not_json == [], not_json[:5]
    from_librdkafka = [json.loads(line) for line in lines if '"logger": "librdkafka"' in line]
    assert from_librdkafka, "no librdkafka line during the outage: nothing was tested"
    # Six clients (three partition consumers, the sink, the offset reporter, the probe) and
    # a few kinds of line each: bounded, instead of the hundreds they printed before.
    assert len(from_librdkafka) <= 30, [r["msg"] for r in from_librdkafka]
    print(f"\n{outage_s} s broker outage: {len(from_librdkafka)} librdkafka lines, all JSON")


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_repeated_librdkafka_lines_pass_once_per_window_with_the_count_left_out() -> None:
    now = [0.0]
    repeats = RepeatFilter(window_s=30, clock=lambda: now[0])

    def line(client: str, text: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord(
            "librdkafka", level, "", 0, "%s [%s] %s", ("FAIL", client, text), None
        )

    refused = "[thrd:b:9092/1]: b:9092/1: Connect to ipv4#10.0.0.1:9092 failed (after {}ms)"
    passed = []
    for second in range(61):
        now[0] = float(second)
        for client in ("rdkafka#consumer-1", "rdkafka#producer-2"):
            record = line(client, refused.format(second % 7))
            if repeats.filter(record):
                passed.append((second, getattr(record, "suppressed_repeats", 0)))
    assert passed == [(0, 0), (30, 59), (60, 59)]
    assert repeats.filter(line("rdkafka#consumer-1", "another kind of line"))
    assert repeats.filter(line("rdkafka#consumer-1", refused.format(1), logging.WARNING))
