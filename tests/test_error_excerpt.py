"""A handler's error body never reaches a DLQ reason or a log line as it is: the status code and
at most a bounded, one-line, masked excerpt (HANDLER_ERROR_EXCERPT_CHARS, 0 = none)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from devtools.handler_server import HandlerServer, Reply
from devtools.kafka import produce, read_topic
from devtools.webhooks import envelope, messages_value, payload, text_message
from devtools.worker import WorkerProcess
from tests.conftest import Stack, Topics
from tests.support.cli import run_cli
from tests.test_handlers import classify_response
from wa_worker.core.excerpt import error_excerpt
from wa_worker.errors import ConfigError, PermanentError, TransientError
from wa_worker.settings import load_settings

SECRET_TEXT = "Meet me at 5th avenue, card 4111 1111 1111 1111"
WA_ID = "31687654321"


def _validation_error(event: dict[str, Any]) -> dict[str, Any]:
    """What FastAPI-style validation errors look like: the offending input echoed back."""
    return {
        "detail": [
            {
                "loc": ["body", "payload", "text"],
                "msg": "value is not a valid order",
                "type": "value_error",
                "input": event["payload"],
                "ctx": {"contact": "kerry@example.com", "phone": "+31 6 8765 4321"},
            }
        ]
    }


def _html_page(event: dict[str, Any]) -> bytes:
    """A framework's debug error page: multi-line, with the request body in it."""
    return f"""<!DOCTYPE html>
<html><head><title>500 Internal Server Error</title>
<style>body {{ font-family: sans-serif; }}</style></head>
<body>
  <h1>Internal Server Error</h1>
  <p>KeyError while handling the request</p>
  <pre>{json.dumps(event["payload"])}</pre>
  <p>wa_id {event["wa_id"]}, text {event["payload"]["text"]["body"]}</p>
</body></html>
""".encode()


def _response(status: int, **kwargs: Any) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://h/"), **kwargs)


EVENT = {"wa_id": WA_ID, "payload": text_message("wamid.1", WA_ID, SECRET_TEXT)}


def _assert_clean(text: str) -> None:
    assert "\n" not in text and "\r" not in text
    for leaked in (SECRET_TEXT, "5th avenue", "4111", WA_ID, "8765", "kerry@example.com"):
        assert leaked not in text, (leaked, text)


def test_a_json_body_keeps_its_keys_and_masks_every_string() -> None:
    with pytest.raises(PermanentError) as caught:
        classify_response(_response(422, json=_validation_error(EVENT)), 1000)
    reason = str(caught.value)
    _assert_clean(reason)
    assert reason.startswith("handler answered HTTP 422: {")
    assert '"detail":[{"loc":["***","***","***"],"msg":"***"' in reason
    assert '"text":{"body":"***"}' in reason  # the structure says where it went wrong


def test_an_html_page_loses_its_tags_and_what_it_echoed() -> None:
    with pytest.raises(TransientError) as caught:
        classify_response(_response(500, content=_html_page(EVENT)), 1000, EVENT)
    reason = str(caught.value)
    _assert_clean(reason)
    assert reason == "handler answered HTTP 500: 500 Internal Server Error · Internal Server Error"


def test_a_text_body_loses_what_the_request_carried() -> None:
    body = f"invalid message from {WA_ID}:\n{SECRET_TEXT}\n(see kerry@example.com)"
    with pytest.raises(PermanentError) as caught:
        classify_response(_response(400, content=body), 1000, EVENT)
    reason = str(caught.value)
    _assert_clean(reason)
    assert reason == "handler answered HTTP 400: invalid message from ***: *** (see ***)"


def test_the_excerpt_is_bounded_and_can_be_turned_off() -> None:
    body = "x" * 5000
    assert len(error_excerpt(body, 200)) == 200
    assert error_excerpt(body, 0) == "" and error_excerpt(" \n ", 200) == ""
    with pytest.raises(PermanentError) as caught:
        classify_response(_response(400, content=body), 0)
    assert str(caught.value) == "handler answered HTTP 400"
    assert caught.value.status_code == 400


@pytest.mark.parametrize("value", ["-1", "lots", "100000"])
def test_a_bad_excerpt_setting_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HANDLER_ERROR_EXCERPT_CHARS", value)
    with pytest.raises(ConfigError, match="HANDLER_ERROR_EXCERPT_CHARS"):
        load_settings()


def test_neither_the_dlq_nor_the_logs_get_the_message_text(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A 400 echoing the request and an HTML 500 page, through the real worker: the DLQ reasons
    and the worker's log hold neither the message text nor a newline in a reason."""

    def plan(event: dict[str, Any], attempt: int) -> Reply:
        if event["event_key"] == "wamid.echo":
            return Reply(400, _validation_error(event))
        return Reply(500, raw=_html_page(event), content_type="text/html; charset=utf-8")

    webhooks = []
    for wamid in ("wamid.echo", "wamid.page"):
        message = text_message(wamid, WA_ID, SECRET_TEXT)
        body = payload(messages_value(messages=[message], wa_id=WA_ID))
        webhooks.append((f"w-{wamid}".encode(), envelope(f"w-{wamid}", body)))
    produce(stack.brokers, topics.inbound, webhooks)
    with HandlerServer(plan) as handler:
        worker = start_worker(HANDLER_URL=handler.url, MAX_RETRIES="0", LOG_FORMAT="json")
        dlq = read_topic(stack.brokers, topics.dlq, until=lambda rs: len(rs) >= 2)
    letters = {r.header("wa-event-key"): r for r in dlq}
    assert set(letters) == {"wamid.echo", "wamid.page"}, worker.log()[-2000:]
    assert letters["wamid.echo"].header("wa-status-code") == "400"
    assert letters["wamid.page"].header("wa-status-code") == "500"
    for letter in letters.values():
        _assert_clean(letter.header("wa-error-reason") or "")
    log = worker.log()
    for leaked in (SECRET_TEXT, "5th avenue", "4111", "kerry@example.com", "<pre>"):
        assert leaked not in log, leaked
    logged = [json.loads(line) for line in log.splitlines() if '"dead-lettered"' in line]
    assert len(logged) == 2, log[-2000:]
    assert all("HTTP 4" in x["error_reason"] or "HTTP 5" in x["error_reason"] for x in logged)


def test_a_callables_multi_line_error_is_one_line() -> None:
    from devtools.webhooks import conversation_webhook
    from wa_worker.core.memory_dedupe import memory_store
    from wa_worker.core.runtime import IoRuntime
    from wa_worker.models.completions import HandleResult
    from wa_worker.models.records import WebhookEvent
    from wa_worker.operators.parse import parse_record

    class Handler:
        async def __call__(self, event: object) -> None:
            raise ValueError("first line\nsecond line\r\n\tthird " + "x" * 1000)

    settings = load_settings(handler_callable="m:f", redis_url="redis://127.0.0.1:1/0")
    runtime = IoRuntime(settings, handler=Handler(), store_factory=memory_store)
    try:
        (event,) = parse_record(conversation_webhook("w", WA_ID, ["wamid.1"]), None)
        assert isinstance(event, WebhookEvent)
        runtime.handle("route", event, "token")
        _, result = runtime.completions.get(timeout=10)
    finally:
        runtime.close()
    assert isinstance(result, HandleResult) and result.error is not None
    assert result.error.startswith("ValueError: first line second line third x")
    assert "\n" not in result.error and len(result.error) <= 500


def test_dlq_list_shows_a_multi_line_reason_of_an_older_dead_letter_on_one_line(
    stack: Stack, topics: Topics, worker_env: dict[str, str]
) -> None:
    """Dead letters written before the excerpt was bounded keep their reasons: the listing
    still gives each one line."""
    producer = Producer({"bootstrap.servers": stack.brokers})
    headers: list[tuple[str, str | bytes | None]] = [
        ("wa-error-class", b"handler_permanent"),
        ("wa-error-reason", b"handler answered HTTP 500: <html>\n<body>\n<h1>Oops</h1>"),
        ("wa-event-key", b"wamid.old"),
    ]
    producer.produce(topics.dlq, b"{}", b"wamid.old", headers=headers)
    assert producer.flush(30) == 0
    listing = run_cli(worker_env, "dlq", "list", "--json").stdout.splitlines()
    (row,) = [json.loads(line) for line in listing]
    assert row["error-reason"] == "handler answered HTTP 500: <html> <body> <h1>Oops</h1>"
    table = run_cli({**worker_env, "COLUMNS": "400"}, "dlq", "list").stdout
    assert "handler answered HTTP 500: <html> <body> <h1>Oops</h1>" in table


def test_a_huge_body_is_cut_before_it_is_read() -> None:
    body = '{"detail": "' + "y" * 5_000_000 + '"}'  # JSON no more once cut: masked as text
    assert error_excerpt(body, 200) == "{***: ***"
