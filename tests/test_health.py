"""The health app (`wa_worker/process/health.py`): /livez, /readyz and /health as JSON with
their status codes, the worker's state in the report, and secrets kept out of it.

Kafka and Redis answers are scripted where the report's shape is the point; the Redis and
Kafka probes themselves run against the real servers, the handler's against a local peer.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from devtools.devstack import free_port
from tests.conftest import Stack, Topics
from wa_worker.core import metrics
from wa_worker.core.masking import mask_secrets
from wa_worker.core.shutdown import Drain
from wa_worker.process.health import HealthApp, Probes
from wa_worker.settings import Settings, load_settings


class ScriptedProbes(Probes):
    """The real probe runner (threads, timeouts, shared results) with Kafka's and Redis's
    answers set by the test: None is healthy, an exception is what the probe raises."""

    def __init__(
        self,
        settings: Settings,
        kafka: Exception | None = None,
        redis: Exception | None = None,
    ) -> None:
        self.kafka_raises, self.redis_raises = kafka, redis
        super().__init__(settings, timeout_s=1.0)

    def kafka(self) -> None:
        if self.kafka_raises is not None:
            raise self.kafka_raises

    def redis_dedupe(self) -> None:
        if self.redis_raises is not None:
            raise self.redis_raises


@pytest.fixture
def settings(stack: Stack) -> Settings:
    return load_settings(kafka_brokers=stack.brokers, redis_url=stack.redis_url, health_port=0)


class Answer:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = int(status.split()[0])
        self.headers = dict(headers)
        self.body = body

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


def get(app: HealthApp, path: str) -> Answer:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        started.append((status, headers))

    body = b"".join(app(environ, start_response))
    [(status, headers)] = started
    return Answer(status, headers, body)


def test_all_healthy_answers_200_with_each_check_and_the_worker(settings: Settings) -> None:
    app = HealthApp(ScriptedProbes(settings), Drain())
    answer = get(app, "/health")
    body = answer.json()
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Content-Length"] == str(len(answer.body))
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"kafka", "redis"}  # no handler check without its URL
    for check in body["checks"].values():
        assert check["status"] == "ok"
        assert isinstance(check["latencyMs"], int)
        assert "error" not in check and "statusCode" not in check
    assert body["worker"]["running"] is True
    assert "draining" not in body["worker"] and "paused" not in body["worker"]
    assert body["timestamp"].endswith("Z") and body["uptime"] >= 0
    for path in ("/readyz", "/"):
        assert get(app, path).status == 200


def test_a_failing_dependency_answers_503_naming_it_and_livez_stays_200(
    settings: Settings,
) -> None:
    app = HealthApp(ScriptedProbes(settings, redis=ConnectionError("refused")), Drain())
    answer = get(app, "/health")
    body = answer.json()
    assert answer.status == 503
    assert body["status"] == "error"
    assert body["checks"]["redis"] == {
        "status": "error",
        "latencyMs": body["checks"]["redis"]["latencyMs"],
        "error": "ConnectionError: refused",
    }
    assert body["checks"]["kafka"]["status"] == "ok"
    assert get(app, "/readyz").status == 503
    livez = get(app, "/livez")
    assert (livez.status, livez.json()) == (200, {"status": "ok"})


def test_secrets_in_a_probes_error_never_reach_the_report(settings: Settings) -> None:
    failure = ConnectionError("cannot reach redis://:hunter2@cache:6379/0")
    answer = get(HealthApp(ScriptedProbes(settings, redis=failure), Drain()), "/health")
    assert b"hunter2" not in answer.body
    assert answer.json()["checks"]["redis"]["error"].endswith("redis://:***@cache:6379/0")


def test_a_draining_worker_says_so(settings: Settings) -> None:
    drain = Drain()
    drain.start("test")
    worker = get(HealthApp(ScriptedProbes(settings), drain), "/health").json()["worker"]
    assert worker["running"] is False
    assert worker["draining"] is True


def test_the_paused_reason_is_reported_while_there_is_one(settings: Settings) -> None:
    reason: list[str | None] = ["handler circuit open"]
    app = HealthApp(ScriptedProbes(settings), Drain(), paused_reason=lambda: reason[0])
    body = get(app, "/health").json()
    assert body["worker"]["paused"] == "handler circuit open"
    assert body["status"] == "ok"  # paused is not unhealthy: the dependencies are fine
    reason[0] = None
    assert "paused" not in get(app, "/health").json()["worker"]


def test_worker_metrics_count_what_the_worker_did(settings: Settings) -> None:
    app = HealthApp(ScriptedProbes(settings), Drain())
    before = get(app, "/health").json()["worker"]["metrics"]
    metrics.PROCESSED.labels("message").inc(2)
    metrics.PROCESSED.labels("status").inc()
    metrics.DEAD_LETTERED.labels("parse_error").inc()
    after = get(app, "/health").json()["worker"]["metrics"]
    assert after["processed"] == before["processed"] + 3  # summed over kinds
    assert after["deadLettered"] == before["deadLettered"] + 1
    assert after["failed"] == before["failed"]


def test_unknown_paths_are_404_and_metrics_are_prometheus_text(settings: Settings) -> None:
    app = HealthApp(ScriptedProbes(settings), Drain())
    missing = get(app, "/nope")
    assert (missing.status, missing.json()) == (404, {"error": "no route /nope"})
    exported = get(app, "/metrics")
    assert exported.status == 200
    assert b"# TYPE wa_events_processed_total counter" in exported.body


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:pa55@host/1", "rediss://user:***@host/1"),
        ("at amqp://u:p@a and http://v:q@b", "at amqp://u:***@a and http://v:***@b"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("http://user@host/x", "http://user@host/x"),
        ("no URL: user:pw@host", "no URL: user:pw@host"),
    ],
)
def test_mask_secrets_hides_url_passwords_only(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


# --- the real probes ---------------------------------------------------------------------


def test_the_redis_probe_pings_the_real_server(stack: Stack, topics: Topics) -> None:
    up = load_settings(kafka_brokers=stack.brokers, redis_url=stack.redis_url, **_topics(topics))
    assert Probes(up, timeout_s=2).run()["redis"].status == "ok"
    down = load_settings(
        kafka_brokers=stack.brokers, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    check = Probes(down, timeout_s=2).run()["redis"]
    assert check.status == "error"
    assert check.error is not None and "ConnectionError" in check.error


def _topics(topics: Topics) -> dict[str, str]:
    return {
        "kafka_inbound_topic": topics.inbound,
        "kafka_processed_topic": topics.processed,
        "kafka_dlq_topic": topics.dlq,
    }


def test_the_kafka_probe_needs_the_three_topics(stack: Stack, topics: Topics) -> None:
    present = load_settings(kafka_brokers=stack.brokers, **_topics(topics))
    assert Probes(present, timeout_s=5).run()["kafka"].status == "ok"
    missing = f"t{uuid.uuid4().hex[:10]}.missing"
    absent = load_settings(
        kafka_brokers=stack.brokers, **{**_topics(topics), "kafka_dlq_topic": missing}
    )
    check = Probes(absent, timeout_s=5).run()["kafka"]
    assert check.status == "error"
    assert check.error is not None and f"topic {missing} unavailable" in check.error


@pytest.fixture
def failing_peer() -> Iterator[str]:
    """A handler's health endpoint that answers 503."""

    class Unavailable(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/healthz"
    server.shutdown()
    server.server_close()


def test_the_handler_check_carries_the_peers_status_code(
    stack: Stack, topics: Topics, failing_peer: str
) -> None:
    settings = load_settings(
        kafka_brokers=stack.brokers,
        redis_url=stack.redis_url,
        handler_health_url=failing_peer,
        **_topics(topics),
    )
    answer = get(HealthApp(Probes(settings, timeout_s=2), Drain()), "/health")
    body = answer.json()
    assert answer.status == 503
    assert body["checks"]["handler"]["statusCode"] == 503
    assert "HTTP 503" in body["checks"]["handler"]["error"]
    assert body["checks"]["kafka"]["status"] == body["checks"]["redis"]["status"] == "ok"


def test_mask_secrets_hides_a_password_that_holds_an_at_sign() -> None:
    url = "redis://:p@ssw0rd@cache:6379/0"
    assert load_settings(redis_url=url).redis_url == url  # accepted as it is
    assert mask_secrets(url) == "redis://:***@cache:6379/0"
