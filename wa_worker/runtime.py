"""The process's I/O runtime: an asyncio event loop on a thread of its own.

Bytewax operators run on worker threads and must never block. They submit work here
(`claim`, `handle`, `record_attempts`) and return at once; results are put on `completions`,
which the completion source feeds back into the dataflow. Redis claims submitted close
together are sent as one pipeline; handler calls run concurrently up to HANDLER_CONCURRENCY.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import replace
from typing import Any, ClassVar

import redis.asyncio as aioredis

from wa_worker import metrics
from wa_worker.breaker import BREAKER
from wa_worker.dedupe import AsyncDedupeStore, AttemptRecord, ClaimRequest, DedupeKeys
from wa_worker.errors import PermanentError, TransientError
from wa_worker.handlers import Handler, build_handler
from wa_worker.models.completions import (
    ClaimResult,
    ClaimStatus,
    Completion,
    HandleResult,
    HandleStatus,
)
from wa_worker.models.records import WebhookEvent
from wa_worker.settings import Settings

log = logging.getLogger(__name__)

_MAX_REDIS_BATCH = 2000
_CLAIM = "claim"


class IoRuntime:
    _instance: ClassVar[IoRuntime | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, settings: Settings, handler: Handler | None = None) -> None:
        self.completions: queue.SimpleQueue[tuple[str, Completion]] = queue.SimpleQueue()
        self._settings = settings
        self._handler = handler or build_handler(settings)
        self._timeout_s = settings.handler_timeout_ms / 1000
        self._outstanding = 0  # submitted, result not yet on `completions`
        self._outstanding_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wa-io", daemon=True)
        self._thread.start()
        self._call(self._setup).result()

    @classmethod
    def instance(cls, settings: Settings) -> IoRuntime:
        """One runtime per process, shared by its Bytewax workers."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = IoRuntime(settings)
            return cls._instance

    async def _setup(self) -> None:
        timeout = self._settings.redis_timeout_ms / 1000
        client = aioredis.from_url(
            self._settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        keys = DedupeKeys(
            self._settings.redis_key_prefix, int(self._settings.dedupe_ttl_days * 86_400_000)
        )
        self._store = AsyncDedupeStore(client, keys)
        self._redis_queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._handler_slots = asyncio.Semaphore(self._settings.handler_concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._batcher = asyncio.create_task(self._redis_batches())

    def _call(self, coro_fn: Any, *args: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro_fn(*args), self._loop)

    # WorkSubmitter, called from Bytewax worker threads: never block.

    def idle(self) -> bool:
        """Nothing submitted is still waiting for its result."""
        with self._outstanding_lock:
            return self._outstanding == 0

    def _submitted(self) -> None:
        with self._outstanding_lock:
            self._outstanding += 1

    def _complete(self, route_key: str, completion: Completion) -> None:
        self.completions.put((route_key, completion))
        with self._outstanding_lock:
            self._outstanding -= 1

    def claim(self, route_key: str, event_key: str, token: str, lease_ms: int) -> None:
        self._submitted()
        request = (route_key, ClaimRequest(event_key, token, lease_ms))
        self._loop.call_soon_threadsafe(self._redis_queue.put_nowait, (_CLAIM, request))

    def record_attempts(self, event_key: str, token: str, attempts: int, lease_ms: int) -> None:
        record = AttemptRecord(event_key, token, attempts, lease_ms)
        self._loop.call_soon_threadsafe(self._redis_queue.put_nowait, ("record", record))

    def handle(self, route_key: str, event: WebhookEvent, token: str) -> None:
        self._submitted()
        self._loop.call_soon_threadsafe(self._start_handler, route_key, event, token)

    # Inside the loop.

    async def _redis_batches(self) -> None:
        while True:
            batch = [await self._redis_queue.get()]
            while not self._redis_queue.empty() and len(batch) < _MAX_REDIS_BATCH:
                batch.append(self._redis_queue.get_nowait())
            claims = [item for kind, item in batch if kind == _CLAIM]
            records = [item for kind, item in batch if kind != _CLAIM]
            await self._run_redis_batch(claims, records)

    async def _run_redis_batch(
        self, claims: list[tuple[str, ClaimRequest]], records: list[AttemptRecord]
    ) -> None:
        try:
            replies = await self._store.run_batch([c for _, c in claims], records)
        except Exception as exc:  # noqa: BLE001  (Redis down: claims wait and retry)
            log.warning("redis batch failed (%d claims will retry): %s", len(claims), exc)
            for route_key, c in claims:
                error = ClaimResult(c.event_key, c.token, ClaimStatus.ERROR, error=str(exc)[:200])
                self._complete(route_key, error)
            return
        for (route_key, c), reply in zip(claims, replies, strict=True):
            result = ClaimResult(c.event_key, c.token, reply.status, reply.attempts, reply.wait_ms)
            self._complete(route_key, result)

    def _start_handler(self, route_key: str, event: WebhookEvent, token: str) -> None:
        task = self._loop.create_task(self._run_handler(route_key, event, token))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _run_handler(self, route_key: str, event: WebhookEvent, token: str) -> None:
        async with self._handler_slots:
            metrics.HANDLER_IN_FLIGHT.inc()
            started = time.perf_counter()
            try:
                result = await asyncio.wait_for(self._handler(event), self._timeout_s * 1.5)
                outcome = HandleResult(event.event_key, token, HandleStatus.OK, result=result)
            except PermanentError as exc:
                outcome = _failed(event, token, HandleStatus.PERMANENT, str(exc), exc.status_code)
            except TransientError as exc:
                outcome = _failed(
                    event,
                    token,
                    HandleStatus.TRANSIENT,
                    str(exc),
                    exc.status_code,
                    exc.retry_after_s,
                )
            except Exception as exc:  # noqa: BLE001  (unknown handler errors are retried)
                outcome = _failed(
                    event, token, HandleStatus.TRANSIENT, f"{type(exc).__name__}: {exc}"[:500]
                )
            finally:
                metrics.HANDLER_IN_FLIGHT.dec()
            latency = time.perf_counter() - started
            metrics.HANDLER_LATENCY.observe(latency)
            if outcome.status is not HandleStatus.OK:
                metrics.FAILED.labels(outcome.status.value).inc()
            BREAKER.record(answered=outcome.status is not HandleStatus.TRANSIENT)
            self._complete(route_key, replace(outcome, latency_s=latency))

    def in_flight(self) -> int:
        return len(self._inflight)


def _failed(
    event: WebhookEvent,
    token: str,
    status: HandleStatus,
    error: str,
    status_code: int | None = None,
    retry_after_s: float | None = None,
) -> HandleResult:
    return HandleResult(
        event.event_key,
        token,
        status,
        error=error,
        status_code=status_code,
        retry_after_s=retry_after_s,
    )
