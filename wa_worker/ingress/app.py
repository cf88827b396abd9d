"""The HTTP side: Meta's verify handshake and deliveries at INGRESS_PATH, and the probes.

A POST is answered 200 only after Kafka acknowledged its envelope; every refusal is one log
line with its outcome class (never the body, a phone number or a secret).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wa_worker.core import tracing
from wa_worker.ingress import metrics
from wa_worker.ingress.config import IngressSettings
from wa_worker.ingress.envelope import build_envelope, envelope_id, handshake, signature_problem
from wa_worker.ingress.publisher import Publisher, RecordHeaders, Unavailable

log = logging.getLogger("wa_worker.ingress")

READY_TTL_S = 1.0  # one readiness probe of Kafka answers every /readyz for this long


@dataclass
class Ingress:
    settings: IngressSettings
    publisher: Publisher
    max_message_bytes: int
    draining: bool = False
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _ready: tuple[float, str | None] = (float("-inf"), None)
    _ready_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _secrets: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        self._secrets = self.settings.app_secrets()  # once, not per request

    def routes(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.ingress_max_body_bytes)
        path = self.settings.ingress_path
        app.router.add_get(path, self.verify, allow_head=False)
        app.router.add_post(path, self.deliver)
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def verify(self, request: web.Request) -> web.Response:
        token = self.settings.wa_verify_token
        challenge = handshake(request.query, token.get_secret_value().encode() if token else None)
        if challenge is None:
            return _refused(403, "bad_verify_token" if token else "no_verify_token")
        metrics.REQUESTS.labels("verified").inc()
        return web.Response(text=challenge, content_type="text/plain")

    async def deliver(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self._idle.clear()
        try:
            if not tracing.ENABLED:
                return await self._deliver(request)
            # The request's span is the trace's root unless Meta sent a context.
            name = f"POST {self.settings.ingress_path}"
            with tracing.ingress_request(request.headers, name) as trace:
                response = await self._deliver(request, trace.headers)
                trace.answered(response.status)
                return response
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def quiet(self, timeout_s: float) -> bool:
        """Wait until no POST is in flight (or the time is up): aiohttp's own shutdown stops
        reading bodies at once, which would cut off requests whose bytes are still arriving."""
        if not self.in_flight:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def _deliver(
        self, request: web.Request, trace_headers: RecordHeaders | None = None
    ) -> web.Response:
        received_at = datetime.now(UTC)
        limit = self.settings.ingress_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _refused(413, "too_large", close=True)
        try:
            async with asyncio.timeout(self.settings.ingress_read_timeout_ms / 1000):
                body = await _read_at_most(request, limit)
        except TimeoutError:
            return _refused(408, "read_timeout", close=True)
        except ConnectionError:
            return _refused(400, "incomplete_body", close=True)
        if body is None:
            return _refused(413, "too_large", close=True)
        metrics.BODY_BYTES.observe(len(body))
        problem = signature_problem(body, request.headers.get("X-Hub-Signature-256"), self._secrets)
        if problem is not None:
            return _refused(401, problem)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            # Meta sends UTF-8 JSON; no JSON string could carry these bytes to the worker as is.
            return _refused(400, "body_not_utf8")
        webhook_id = envelope_id(body)
        value = build_envelope(text, webhook_id, request.headers, received_at)
        if len(value) > self.max_message_bytes:
            return _refused(413, "too_large_for_kafka")
        started = time.perf_counter()
        try:
            await self.publisher.publish(webhook_id.encode(), value, trace_headers)
        except Unavailable as exc:
            return _refused(503, exc.outcome, detail=str(exc))
        finally:
            metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        metrics.REQUESTS.labels("accepted").inc()
        return web.Response(text="OK")

    async def livez(self, _request: web.Request) -> web.Response:
        if self.publisher.fatal is not None:
            return web.Response(status=503, text=f"producer failed: {self.publisher.fatal}\n")
        return web.Response(text="ok\n")

    async def readyz(self, _request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="draining\n")
        problem = await self._readiness()
        if problem is not None:
            return web.Response(status=503, text=problem + "\n")
        return web.Response(text="ready\n")

    async def _readiness(self) -> str | None:
        async with self._ready_lock:  # a burst of probes runs one check
            checked_at, problem = self._ready
            if time.monotonic() - checked_at >= READY_TTL_S:
                problem = await asyncio.to_thread(self.publisher.ready, 2.0)
                self._ready = (time.monotonic(), problem)
            return problem

    async def metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _read_at_most(request: web.Request, limit: int) -> bytes | None:
    """The body, or None as soon as more than `limit` bytes arrived (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    if request.content_length is not None and size < request.content_length:
        raise ConnectionError("body shorter than its Content-Length")
    return b"".join(chunks)


def _refused(status: int, outcome: str, close: bool = False, detail: str = "") -> web.Response:
    metrics.REQUESTS.labels(outcome).inc()
    extra = {"outcome": outcome, "status": status, **({"detail": detail} if detail else {})}
    log.warning("request refused", extra=extra)
    response = web.Response(status=status, text=outcome + "\n")
    if close:
        response.force_close()  # the unread rest of the body is not worth reading
    return response
