"""The process's I/O runtime: an asyncio event loop on a thread of its own.

Bytewax operators run on worker threads and must never block. They submit work here (`claim`,
`handle`, `record_attempts`, `mark_done`) and return at once; results are put on `completions`,
which the completion source feeds back into the dataflow. Submissions are handed over in
batches (one loop wake-up for many), Redis operations submitted close together go out as one
pipeline, and handler calls run concurrently up to HANDLER_CONCURRENCY.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from wa_worker.core import metrics, tracing
from wa_worker.core.breaker import CircuitBreaker
from wa_worker.core.dedupe import (
    AttemptRecord,
    ClaimReply,
    ClaimRequest,
    DedupeStore,
    DoneMark,
    redis_store,
)
from wa_worker.core.excerpt import one_line
from wa_worker.core.handlers import Handler, build_handler, passthrough
from wa_worker.errors import PermanentError, TransientError
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
_DONE_RETRY_S = 1.0
StoreFactory = Callable[[Settings], DedupeStore]
# The pass-through's answer, the same for every event (an inline result is the head's own).
_PASSED = HandleResult("", "", HandleStatus.OK, result=None, latency_s=0.0)
_Replies = concurrent.futures.Future[list[ClaimReply]]


def claim_result(request: ClaimRequest, reply: ClaimReply) -> ClaimResult:
    """A claim's answer, as its conversation receives it."""
    return ClaimResult(
        request.event_key,
        request.token,
        reply.status,
        reply.attempts,
        reply.wait_ms,
        prior_rank=reply.prior_rank,
    )


class IoRuntime:
    def __init__(
        self,
        settings: Settings,
        handler: Handler | None = None,
        store_factory: StoreFactory = redis_store,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.completions: queue.SimpleQueue[tuple[str, Completion]] = queue.SimpleQueue()
        self._settings = settings
        self._handler = handler or build_handler(settings)
        self._store_factory = store_factory  # Redis, or in-process memory for offline replay
        self._breaker = breaker or CircuitBreaker(enabled=False)  # told every call's outcome
        self._timeout_s = settings.handler_timeout_ms / 1000
        self._outstanding = 0  # claims and calls submitted, result not yet on `completions`
        self._lock = threading.Lock()
        self._inbox: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._wake_pending = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wa-io", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._setup(), self._loop).result()
        atexit.register(self.close)

    async def _setup(self) -> None:
        self._store = self._store_factory(self._settings)
        self._claims: list[tuple[str, ClaimRequest]] = []
        # Claims a Bytewax worker waits for (`claim_now`), each group with its future.
        self._waited: list[tuple[list[ClaimRequest], _Replies]] = []
        self._records: list[AttemptRecord] = []
        self._dones: list[DoneMark] = []
        self._redis_wake = asyncio.Event()
        self._handler_slots = asyncio.Semaphore(self._settings.handler_concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._redis_turn = asyncio.Lock()  # one batch at a time; shutdown waits its turn
        self._batcher = asyncio.create_task(self._redis_batches())

    def close(self) -> None:
        """Write what is still queued for Redis (done markers above all), then stop the loop."""
        if not self._loop.is_running():
            return
        # Room for the batch in flight and the last one, each bounded by the Redis timeout.
        timeout_s = 2 * self._settings.redis_timeout_ms / 1000 + 2.0
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout_s)
        except Exception as exc:  # noqa: BLE001  (exiting anyway: say what may be repeated)
            log.warning(
                "shutdown did not finish writing to Redis (%s): %d done markers not written; "
                "their events may be handled again after their lease",
                exc or type(exc).__name__,
                len(self._dones),
            )
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)  # stopped when this returns: a second close is a no-op

    async def _shutdown(self) -> None:
        self._drain_inbox()
        # Stop the batcher between batches: cancelling it mid-batch would lose the done
        # markers it holds (the next run would then wait out their leases and redo them).
        async with self._redis_turn:
            self._batcher.cancel()
        if self._claims or self._waited or self._records or self._dones:
            await self._run_redis_batch()
        for task in self._inflight:
            task.cancel()
        await self._store.aclose()
        if (close_handler := getattr(self._handler, "aclose", None)) is not None:
            await close_handler()  # the HTTP client's sessions, the callable's thread pool

    # Called from Bytewax worker threads: never block.

    def idle(self) -> bool:
        """Every claim and handler call submitted has reported back."""
        with self._lock:
            return self._outstanding == 0

    def unfinished(self) -> int:
        """Claims and handler calls submitted that have not reported back."""
        with self._lock:
            return self._outstanding

    def claim(self, route_key: str, event_key: str, token: str, lease_ms: int) -> None:
        request = ClaimRequest(event_key, token, lease_ms)
        self._post(self._queue_claim, route_key, request, outstanding=1)

    def claim_now(self, claims: list[ClaimRequest], timeout_s: float) -> list[ClaimReply]:
        """Claims answered to the caller, who waits for them (operators/preclaim.py): they go
        in the next Redis batch with everything else queued. Raises what the batch raised,
        or TimeoutError after `timeout_s` (the claims may still be taken then)."""
        replies: _Replies = concurrent.futures.Future()
        self._post(self._queue_waited, claims, replies)
        return replies.result(timeout_s)

    def record_attempts(self, event_key: str, token: str, attempts: int, lease_ms: int) -> None:
        self._post(self._queue_record, AttemptRecord(event_key, token, attempts, lease_ms))

    def mark_done(self, marks: list[DoneMark]) -> None:
        """After Kafka acknowledged these events' outcomes (the sink calls this)."""
        self._post(self._queue_dones, marks)

    def handle(self, route_key: str, event: WebhookEvent, token: str) -> None:
        self._post(self._start_handler, route_key, event, token, outstanding=1)

    def handle_inline(self, event: WebhookEvent, token: str) -> HandleResult | None:
        """The pass-through handler answers at once: no task, no hop through the loop."""
        if self._handler is not passthrough:
            return None
        return _PASSED

    def inline_handled(self, count: int) -> None:
        metrics.observe_zeros(metrics.HANDLER_LATENCY, count)

    def _post(self, fn: Callable[..., None], *args: Any, outstanding: int = 0) -> None:
        self._inbox.append((fn, args))
        with self._lock:
            self._outstanding += outstanding
            wake, self._wake_pending = not self._wake_pending, True
        if wake:  # one wake-up (a write to the loop's self-pipe) per batch of submissions
            self._loop.call_soon_threadsafe(self._drain_inbox)

    # Inside the loop.

    def _drain_inbox(self) -> None:
        with self._lock:
            self._wake_pending = False
        while self._inbox:
            fn, args = self._inbox.popleft()
            fn(*args)
        if self._claims or self._waited or self._records or self._dones:
            self._redis_wake.set()

    # The batch lists are swapped out by each Redis batch: look them up when the item is
    # queued, never bind their methods at submission time.
    def _queue_claim(self, route_key: str, request: ClaimRequest) -> None:
        self._claims.append((route_key, request))

    def _queue_waited(self, claims: list[ClaimRequest], replies: _Replies) -> None:
        self._waited.append((claims, replies))

    def _queue_record(self, record: AttemptRecord) -> None:
        self._records.append(record)

    def _queue_dones(self, marks: list[DoneMark]) -> None:
        self._dones.extend(marks)

    def _complete(self, route_key: str, completion: Completion) -> None:
        self.completions.put((route_key, completion))
        with self._lock:
            self._outstanding -= 1

    def _complete_all(self, completions: list[tuple[str, Completion]]) -> None:
        """A Redis batch's results: each on the queue, then one update of the count (the
        lock is shared with the Bytewax workers' submissions)."""
        put = self.completions.put
        for item in completions:
            put(item)
        with self._lock:
            self._outstanding -= len(completions)

    async def _redis_batches(self) -> None:
        while True:
            # Done markers that failed are retried every second even when nothing else comes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._redis_wake.wait(), _DONE_RETRY_S if self._dones else None
                )
            self._redis_wake.clear()
            async with self._redis_turn:
                await self._run_redis_batch()

    async def _run_redis_batch(self) -> None:
        # Waited-for claims go whole (a Bytewax batch's worth), the others up to the cap.
        waited, self._waited = self._waited, []
        requests = [c for group, _ in waited for c in group]
        room = max(_MAX_REDIS_BATCH - len(requests), 0)
        claims, self._claims = self._claims[:room], self._claims[room:]
        records, self._records = self._records, []
        dones, self._dones = self._dones, []
        if self._claims:
            self._redis_wake.set()
        started_ns = time.time_ns()
        requests += [c for _, c in claims]
        try:
            replies = await self._store.run_batch(requests, records, dones)
        except Exception as exc:  # noqa: BLE001  (Redis down: claims wait, marks are retried)
            for _, future in waited:
                future.set_exception(exc)
            log.warning(
                "redis batch failed (%d claims wait, %d done marks retried): %s",
                len(requests),
                len(dones),
                exc,
            )
            metrics.REDIS_ERRORS.inc()
            if tracing.ENABLED:
                keys = [c.event_key for c in requests]
                tracing.redis_batch(keys, started_ns, len(records), len(dones), str(exc))
            self._dones[:0] = dones
            metrics.DONE_MARKS_PENDING.set(len(self._dones))
            error = str(exc)[:200]
            self._complete_all(
                [
                    (route_key, ClaimResult(c.event_key, c.token, ClaimStatus.ERROR, error=error))
                    for route_key, c in claims
                ]
            )
            return
        metrics.DONE_MARKS_PENDING.set(len(self._dones))
        if tracing.ENABLED:
            keys = [c.event_key for c in requests]
            tracing.redis_batch(keys, started_ns, len(records), len(dones), None)
        start = 0
        for group, future in waited:
            future.set_result(replies[start : start + len(group)])
            start += len(group)
        replies = replies[start:]
        self._complete_all(
            [
                (route_key, claim_result(c, reply))
                for (route_key, c), reply in zip(claims, replies, strict=True)
            ]
        )

    def _start_handler(self, route_key: str, event: WebhookEvent, token: str) -> None:
        task = self._loop.create_task(self._run_handler(route_key, event, token))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _run_handler(self, route_key: str, event: WebhookEvent, token: str) -> None:
        async with self._handler_slots:
            metrics.HANDLER_IN_FLIGHT.inc()
            started = time.perf_counter()
            try:
                call = (
                    tracing.handler_call(self._handler, event)
                    if tracing.ENABLED
                    else self._handler(event)
                )
                result = await asyncio.wait_for(call, self._timeout_s * 1.5)
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
                    event, token, HandleStatus.TRANSIENT, f"{type(exc).__name__}: {exc}"
                )
            finally:
                metrics.HANDLER_IN_FLIGHT.dec()
            latency = time.perf_counter() - started
            metrics.HANDLER_LATENCY.observe(latency)
            if outcome.status is not HandleStatus.OK:
                metrics.FAILED.labels(outcome.status.value).inc()
            self._breaker.record(answered=outcome.status is not HandleStatus.TRANSIENT)
            self._complete(route_key, replace(outcome, latency_s=latency))


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
        error=one_line(error),  # a callable's exception text may span lines (a traceback)
        status_code=status_code,
        retry_after_s=retry_after_s,
    )
