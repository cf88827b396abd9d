"""Handler outcome classification, against httpx's MockTransport (a fake HTTP peer)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import pytest

from operators.parse import parse_record
from tests.support.webhooks import conversation_webhook
from wa_worker.errors import PermanentError, TransientError
from wa_worker.handlers import HttpHandler, classify_response, header_safe, parse_retry_after


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


def test_retry_after_as_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_header_safe_keeps_wamids_and_encodes_the_rest() -> None:
    assert header_safe("wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA") == (
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"
    )
    assert header_safe("wamid.é\n").isascii()


def test_http_handler_sends_the_event_with_its_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def peer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    (event,) = parse_record(conversation_webhook("w1", "3161", ["wamid.x"]), None)
    handler = HttpHandler("http://handler/events", timeout_s=1, concurrency=16)
    for client in handler._clients:
        client._transport = httpx.MockTransport(peer)
    assert asyncio.run(handler(event)) == {"ok": True}  # type: ignore[arg-type]
    assert seen[0].headers["Idempotency-Key"] == "wamid.x"
    assert b'"event_key":"wamid.x"' in seen[0].content.replace(b" ", b"")
    assert len(handler._clients) == 2  # 16 connections over clients of 8


def test_json_bytes_fall_back_for_what_orjson_refuses() -> None:
    from wa_worker import jsonbytes

    assert jsonbytes.dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    big = {"n": 2**70, "s": "\ud800"}  # both can come out of json.loads on Meta's payloads
    assert json.loads(jsonbytes.dumps(big)) == big
