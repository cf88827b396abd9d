"""`/health`, `/livez`, `/readyz` and `/metrics` on HEALTH_PORT, served from the dataflow process.

`/health` (and `/readyz`) probe Kafka, Redis and the handler concurrently, each with a short
timeout; any failure answers 503 with the error and upstream status code. Each probe runs on
a thread of its own, one run at a time, and its result is shared for RESULT_TTL_S: concurrent
requests wait for the same run instead of queueing behind each other, so every request answers
within the probe timeout (plus a little) however many arrive while Kafka is down.
The JSON keeps the original worker's shape. `/metrics` is prometheus-client's WSGI app.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import redis
from confluent_kafka.admin import AdminClient
from prometheus_client import make_wsgi_app
from pydantic import BaseModel, ConfigDict, Field

from wa_worker.core import metrics, redis_topology
from wa_worker.core.dedupe import check_dedupe_works, dedupe_keys
from wa_worker.core.masking import mask_secrets
from wa_worker.core.redis_client import redis_client
from wa_worker.core.shutdown import Drain
from wa_worker.errors import ProbeFailed
from wa_worker.settings import Settings

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Check(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    status: str
    latency_ms: int = Field(serialization_alias="latencyMs")
    error: str | None = None
    status_code: int | None = Field(None, serialization_alias="statusCode")
    # Redis only: its mode, and the cluster's primaries or Sentinel's primary (host:port).
    mode: str | None = None
    nodes: list[str] | None = None
    primary: str | None = None


# A probe raises when the dependency is not usable; it may return fields to show beside status.
Probe = Callable[[], dict[str, Any] | None]


class DetailedProbeFailed(ProbeFailed):
    """A failed probe that still has fields to show (the Redis mode and nodes); shown as the
    error it stands for (`shown_as`: ProbeFailed, or the Redis client's own error)."""

    def __init__(
        self, message: str, details: dict[str, Any], shown_as: str = "ProbeFailed"
    ) -> None:
        super().__init__(message)
        self.details = details
        self.shown_as = shown_as


# How long one probe's result answers every request (a burst of requests runs it once).
RESULT_TTL_S = 1.0
# A request waits this much longer than the probe timeout for a run that is finishing.
_GRACE_S = 0.25


class SharedProbe:
    """One probe, run off the request threads, one run at a time, its result shared."""

    def __init__(
        self, name: str, probe: Probe, timeout_s: float, ttl_s: float = RESULT_TTL_S
    ) -> None:
        self._name = name
        self._probe = probe
        self._timeout_s = timeout_s
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._result: Check | None = None
        self._finished_at = float("-inf")
        self._running: threading.Event | None = None
        self._started_at = 0.0

    def begin(self) -> tuple[threading.Event, float]:
        """The run whose result answers a request now: a fresh one, or the one in flight."""
        with self._lock:
            if self._result is not None and time.monotonic() - self._finished_at < self._ttl_s:
                done = threading.Event()
                done.set()
                return done, self._finished_at
            if self._running is None:
                self._running = threading.Event()
                self._started_at = time.monotonic()
                threading.Thread(
                    target=self._run, args=(self._running,), name=f"probe-{self._name}", daemon=True
                ).start()
            return self._running, self._started_at

    def result(self, run: tuple[threading.Event, float], deadline: float) -> Check:
        done, started_at = run
        if done.wait(max(0.0, deadline - time.monotonic())):
            with self._lock:
                assert self._result is not None
                return self._result
        return Check(
            status="error",
            latency_ms=_ms_since(started_at),
            status_code=None,
            error=f"no answer within {self._timeout_s:g}s",
        )

    def _run(self, done: threading.Event) -> None:
        check = _timed(self._probe)
        with self._lock:
            self._result, self._finished_at, self._running = check, time.monotonic(), None
        done.set()


class Probes:
    def __init__(self, settings: Settings, timeout_s: float = 2.0) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        self._admin = AdminClient({**settings.admin_config(), "log_level": 0})
        self._redis = redis_client(settings, timeout_s)
        self._keys = dedupe_keys(settings)
        self.probes: dict[str, Probe] = {"kafka": self.kafka, "redis": self.redis_dedupe}
        if settings.handler_health_url:
            self.probes["handler"] = self.handler
        self._shared = {
            name: SharedProbe(name, probe, timeout_s) for name, probe in self.probes.items()
        }

    def kafka(self) -> dict[str, Any] | None:
        topic = self._settings.kafka_inbound_topic
        try:
            metadata = self._admin.list_topics(topic, timeout=self._timeout_s)
        finally:
            self._admin.poll(0)  # hands librdkafka's queued log lines to its logger
        found = metadata.topics.get(topic)
        if not metadata.brokers:
            raise ProbeFailed("no broker answered")
        if found is None or found.error is not None:
            raise ProbeFailed(f"topic {topic} unavailable: {found.error if found else 'missing'}")
        return None

    def redis_dedupe(self) -> dict[str, Any] | None:
        """Not PING: a cluster that fails, a Sentinel set without a primary or a Redis that
        answers but refuses the dedupe's scripts fails the check, the mode shown either way."""
        topology = redis_topology.inspect(self._redis)
        details = topology.fields()
        if topology.problem:
            raise DetailedProbeFailed(f"Redis {topology.mode.value}: {topology.problem}", details)
        try:
            check_dedupe_works(self._redis, self._keys)
        except (redis.ResponseError, redis.RedisClusterException) as exc:
            message = f"Redis refuses the worker's dedupe script: {exc}"
            raise DetailedProbeFailed(message, details) from exc
        except redis.RedisError as exc:
            raise DetailedProbeFailed(str(exc), details, type(exc).__name__) from exc
        return details

    def handler(self) -> dict[str, Any] | None:
        url = self._settings.handler_health_url
        assert url is not None
        response = httpx.get(url, timeout=self._timeout_s)
        if not response.is_success:
            raise ProbeFailed(
                f"handler health answered HTTP {response.status_code}", response.status_code
            )
        return None

    def run(self) -> dict[str, Check]:
        deadline = time.monotonic() + self._timeout_s + _GRACE_S
        runs = {name: shared.begin() for name, shared in self._shared.items()}
        return {name: self._shared[name].result(run, deadline) for name, run in runs.items()}


def _timed(probe: Probe) -> Check:
    started = time.perf_counter()
    try:
        details = probe() or {}
    except Exception as exc:  # noqa: BLE001  (a failing probe is an answer, not a crash)
        code = exc.status_code if isinstance(exc, ProbeFailed) else None
        name = exc.shown_as if isinstance(exc, DetailedProbeFailed) else type(exc).__name__
        return Check(
            status="error",
            latency_ms=_ms(started),
            status_code=code,
            error=mask_secrets(f"{name}: {exc}")[:500],
            **(exc.details if isinstance(exc, DetailedProbeFailed) else {}),
        )
    return Check(status="ok", latency_ms=_ms(started), status_code=None, **details)


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def counter_total(counter: Any) -> int:
    return int(
        sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))
    )


def worker_metrics() -> dict[str, int]:
    return {
        "processed": counter_total(metrics.PROCESSED),
        "failed": counter_total(metrics.FAILED),
        "retried": counter_total(metrics.RETRIED),
        "deadLettered": counter_total(metrics.DEAD_LETTERED),
        "duplicates": counter_total(metrics.DUPLICATES),
    }


class HealthApp:
    def __init__(
        self, probes: Probes, drain: Drain, paused_reason: Callable[[], str | None] = lambda: None
    ) -> None:
        self._probes = probes
        self._drain = drain
        self._paused_reason = paused_reason
        self._started = time.monotonic()
        self._metrics_app = make_wsgi_app()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/livez":
            return _json(start_response, 200, {"status": "ok"})
        if path in ("/health", "/readyz", "/"):
            body = self.report()
            return _json(start_response, 200 if body["status"] == "ok" else 503, body)
        return _json(start_response, 404, {"error": f"no route {path}"})

    def report(self) -> dict[str, Any]:
        checks = self._probes.run()
        healthy = all(c.status == "ok" for c in checks.values())
        worker: dict[str, Any] = {"running": not self._drain.draining, "metrics": worker_metrics()}
        if self._drain.draining:
            worker["draining"] = True
        if (reason := self._paused_reason()) is not None:
            worker["paused"] = reason
        return {
            "status": "ok" if healthy else "error",
            "timestamp": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "uptime": round(time.monotonic() - self._started, 3),
            "checks": {
                name: c.model_dump(by_alias=True, exclude_none=True) for name, c in checks.items()
            },
            "worker": worker,
        }


def _json(start_response: StartResponse, status: int, body: dict[str, Any]) -> list[bytes]:
    payload = json.dumps(body).encode()
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    start_response(
        f"{status} {reason}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
    )
    return [payload]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(app: WsgiApp, port: int) -> WSGIServer:
    server = make_server(
        "0.0.0.0", port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="wa-health", daemon=True).start()
    return server
