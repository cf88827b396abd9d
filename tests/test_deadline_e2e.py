"""Deadlines and staleness with a real worker on the real broker and Redis: a message whose
handler keeps failing is dead-lettered `deadline_exceeded` at the end of its 24-hour window,
not retried on; an event older than MAX_EVENT_AGE_S is skipped (STALE_EVENTS=skip) with a
processed record saying so; every processed record carries the event's time and age."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from devtools.handler_server import HandlerServer, Reply
from devtools.kafka import produce, read_topic
from devtools.webhooks import envelope, messages_value, payload, text_message
from devtools.worker import WorkerProcess
from tests.conftest import Stack, Topics


def dated(wamid: str, wa_id: str, age_s: float) -> bytes:
    message = {**text_message(wamid, wa_id), "timestamp": str(int(time.time() - age_s))}
    return envelope(f"w-{wamid}", payload(messages_value(messages=[message], wa_id=wa_id)))


def plan(event: dict[str, Any], attempt: int) -> Reply:
    return Reply(503) if event["event_key"] == "wamid.late" else Reply(200, {"ok": True})


def test_a_failing_message_dead_letters_at_its_deadline_and_old_ones_are_skipped(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    window = 24 * 3600
    produce(
        stack.brokers,
        topics.inbound,
        [
            (b"a", dated("wamid.late", "31611111", window - 8)),  # 8 s of its window left
            (b"b", dated("wamid.old", "31622222", 26 * 3600)),  # older than MAX_EVENT_AGE_S
            (b"c", dated("wamid.new", "31633333", 5)),
        ],
    )
    with HandlerServer(plan) as handler:
        started = time.monotonic()
        worker = start_worker(
            HANDLER_URL=handler.url,
            RETRY_DELAY_MS="500",
            RETRY_MAX_DELAY_MS="1000",
            RETRY_JITTER="0",
            MAX_RETRIES="100",
            MAX_EVENT_AGE_S=str(25 * 3600),
            STALE_EVENTS="skip",
        )
        dlq = read_topic(stack.brokers, topics.dlq, until=lambda rs: len(rs) >= 1, timeout_s=90)
        took = time.monotonic() - started
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= 2, timeout_s=60
        )
        assert worker.running(), worker.log()

    (letter,) = dlq
    assert letter.header("wa-event-key") == "wamid.late"
    assert letter.header("wa-error-class") == "deadline_exceeded", letter.header("wa-error-reason")
    assert "24-hour customer-service window" in (letter.header("wa-error-reason") or "")
    calls = handler.calls_for("wamid.late")
    # Retried while its window lasted (about 1 s apart), then no more: far short of 100 retries.
    assert 1 <= len(calls) <= 12 and took < 60, (len(calls), took)
    assert letter.header("wa-attempts") == str(len(calls))

    records = {r.header("wa-event-key"): json.loads(r.value) for r in processed}
    old, new = records["wamid.old"], records["wamid.new"]
    assert (old["skipped"], old["stale"], old["event"]["stale"]) == ("stale", True, True)
    assert handler.calls_for("wamid.old") == []
    assert 26 * 3600 - 5 <= old["event_age_s"] <= 26 * 3600 + 120
    assert (new["skipped"], new["stale"]) == (None, False) and 0 <= new["event_age_s"] < 120
    assert abs(new["event_time"] - (time.time() - 5)) < 120
