"""Handler outcome classification and the HTTP handler, against a local HTTP peer."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from devtools.handler_server import HandlerServer, Reply
from devtools.webhooks import conversation_webhook
from wa_worker.core.handlers import HttpHandler, classify_reply, header_safe, parse_retry_after
from wa_worker.errors import PermanentError, TransientError
from wa_worker.operators.parse import parse_record


def classify_response(
    response: httpx.Response, excerpt_chars: int = 200, sent: object = None
) -> object:
    """`classify_reply` on a reply built with httpx's helpers (json=, text=, headers=)."""
    return classify_reply(
        response.status_code,
        response.content,
        response.headers.get("retry-after"),
        excerpt_chars,
        sent,
        response.encoding or "utf-8",
    )


def _response(status: int, **kwargs: object) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://h/"), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses(status: int) -> None:
    with pytest.raises(TransientError) as caught:
        classify_response(_response(status, headers={"Retry-After": "3"}))
    assert caught.value.status_code == status and caught.value.retry_after_s == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_other_4xx_are_permanent(status: int) -> None:
    with pytest.raises(PermanentError):
        classify_response(_response(status))


def test_success_returns_json_or_text_or_none() -> None:
    assert classify_response(_response(200, json={"a": 1})) == {"a": 1}
    assert classify_response(_response(201, text="done")) == "done"
    assert classify_response(_response(204)) is None


def test_json_in_another_unicode_encoding_is_still_json() -> None:
    utf16 = '{"a": 1}'.encode("utf-16")
    assert classify_reply(200, utf16, encoding="utf-16") == {"a": 1}
    assert classify_reply(200, "plain text".encode("utf-16"), encoding="utf-16") == "plain text"


def test_retry_after_as_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_header_safe_keeps_wamids_and_encodes_the_rest() -> None:
    assert header_safe("wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA") == (
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"
    )
    assert header_safe("wamid.é\n").isascii()


def test_http_handler_sends_the_event_and_classifies_replies() -> None:
    def plan(event: dict[str, Any], attempt: int) -> Reply:
        statuses = {"wamid.ok": 200, "wamid.busy": 503, "wamid.bad": 422, "wamid.slow": 200}
        delay = 2.0 if event["event_key"] == "wamid.slow" else 0.0
        return Reply(statuses[event["event_key"]], {"seen": event["event_key"]}, delay_s=delay)

    events = parse_record(
        conversation_webhook("w1", "3161", ["wamid.ok", "wamid.busy", "wamid.bad", "wamid.slow"]),
        None,
    )

    async def call_all(url: str) -> list[object]:
        handler = HttpHandler(url, timeout_s=0.5, concurrency=4)
        try:
            return await asyncio.gather(
                *(handler(e) for e in events),  # type: ignore[arg-type]
                return_exceptions=True,
            )
        finally:
            await handler.aclose()

    with HandlerServer(plan) as server:
        ok, busy, bad, slow = asyncio.run(call_all(server.url))
        calls = {c.event_key: c for c in server.calls}
    assert ok == {"seen": "wamid.ok"}
    assert isinstance(busy, TransientError) and busy.status_code == 503
    assert isinstance(bad, PermanentError) and bad.status_code == 422
    assert isinstance(slow, TransientError) and "timed out" in str(slow)
    assert calls["wamid.ok"].idempotency_key == "wamid.ok"


def test_an_unreachable_handler_is_a_transient_error_naming_why() -> None:
    event = parse_record(conversation_webhook("w1", "3161", ["wamid.x"]), None)[0]

    async def call() -> None:
        handler = HttpHandler("http://127.0.0.1:1/", timeout_s=1.0, concurrency=1)
        try:
            await handler(event)  # type: ignore[arg-type]
        finally:
            await handler.aclose()

    with pytest.raises(TransientError, match="handler unreachable: ClientConnectorError"):
        asyncio.run(call())


def test_json_bytes_fall_back_for_what_orjson_refuses() -> None:
    from wa_worker.core import jsonbytes

    assert jsonbytes.dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    big = {"n": 2**70, "s": "\ud800"}  # both can come out of json.loads on Meta's payloads
    assert json.loads(jsonbytes.dumps(big)) == big
    odd = {"n": 2**70, "f": [float("inf"), float("nan")]}  # the fallback path, with non-finite
    assert json.loads(jsonbytes.dumps(odd)) == {"n": 2**70, "f": [None, None]}


def test_runtime_close_writes_done_markers_and_closes_the_handler(
    worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    from tests.support.markers import marker_state
    from wa_worker.core.dedupe import MarkerState
    from wa_worker.core.runtime import IoRuntime
    from wa_worker.settings import load_settings_or_exit

    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings_or_exit()
    closed: list[bool] = []

    class Handler:
        async def __call__(self, event: object) -> None:
            return None

        async def aclose(self) -> None:
            closed.append(True)

    runtime = IoRuntime(settings, handler=Handler())
    runtime.mark_done([("wamid.closing", "processed")])
    runtime.close()
    assert closed == [True]
    client = redis.Redis.from_url(settings.redis_url)
    try:
        state = marker_state(client, settings.redis_key_prefix, "wamid.closing")
        assert state is MarkerState.PROCESSED
    finally:
        client.close()
