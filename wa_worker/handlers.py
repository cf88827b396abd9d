"""The pluggable handler: an HTTP endpoint, a Python callable, or the pass-through default.

Every handler is an async callable taking a `WebhookEvent` and returning a JSON-able result,
raising `TransientError` (retry later) or `PermanentError` (DLQ now).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import itertools
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from wa_worker import jsonbytes
from wa_worker.errors import ConfigError, PermanentError, TransientError
from wa_worker.models.records import WebhookEvent
from wa_worker.settings import Settings

Handler = Callable[[WebhookEvent], Awaitable[Any]]

# Statuses worth retrying: the request may succeed later unchanged.
TRANSIENT_STATUSES = frozenset({408, 425, 429})


def classify_response(response: httpx.Response) -> Any:
    """Result for 2xx; raise TransientError or PermanentError otherwise."""
    code = response.status_code
    if 200 <= code < 300:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text
    detail = f"handler answered HTTP {code}: {response.text[:200]}"
    if code in TRANSIENT_STATUSES or code >= 500:
        raise TransientError(
            detail,
            retry_after_s=parse_retry_after(response.headers.get("retry-after")),
            status_code=code,
        )
    raise PermanentError(detail, status_code=code)


def header_safe(value: str) -> str:
    """HTTP header values are ASCII: percent-encode anything else (real wamids are ASCII)."""
    if value.isascii() and value.isprintable():
        return value
    return urllib.parse.quote(value, safe="")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After is seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class HttpHandler:
    # httpcore's pool slows down sharply with many connections in one client (measured: 64
    # connections gave 129 calls/s against a 50 ms peer; 8 clients of 8 gave 1,072/s), so the
    # connections are spread over small clients, used in turn.
    CONNECTIONS_PER_CLIENT = 8

    def __init__(self, url: str, timeout_s: float, concurrency: int) -> None:
        self._url = url
        shards = -(-concurrency // self.CONNECTIONS_PER_CLIENT)
        per_client = -(-concurrency // shards)
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        self._clients = [httpx.AsyncClient(timeout=timeout_s, limits=limits) for _ in range(shards)]
        self._next = itertools.cycle(self._clients)

    async def __call__(self, event: WebhookEvent) -> Any:
        try:
            response = await next(self._next).post(
                self._url,
                content=jsonbytes.dumps(event.for_handler()),
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": header_safe(event.event_key),
                    "X-WA-Event-Kind": event.kind.value,
                },
            )
        except httpx.TimeoutException as exc:
            raise TransientError(f"handler timed out: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"handler unreachable: {type(exc).__name__}: {exc}") from exc
        return classify_response(response)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


class CallableHandler:
    """`module:function`; sync functions run on a thread pool so the event loop stays free."""

    def __init__(self, spec: str, concurrency: int) -> None:
        self._function = load_callable(spec)
        self._is_async = inspect.iscoroutinefunction(self._function)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="wa-handler")

    async def __call__(self, event: WebhookEvent) -> Any:
        if self._is_async:
            return await self._function(event)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._function, event)

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def passthrough(event: WebhookEvent) -> Any:
    """No handler configured: the normalized event on the processed topic is the result."""
    return None


def load_callable(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"HANDLER_CALLABLE: cannot load {spec!r}: {exc}") from None
    if not callable(function):
        raise ConfigError(f"HANDLER_CALLABLE: {spec!r} is not callable")
    return function  # type: ignore[no-any-return]


def build_handler(settings: Settings) -> Handler:
    timeout_s = settings.handler_timeout_ms / 1000
    if settings.handler_url:
        return HttpHandler(settings.handler_url, timeout_s, settings.handler_concurrency)
    if settings.handler_callable:
        return CallableHandler(settings.handler_callable, settings.handler_concurrency)
    return passthrough
