"""Retries against the real stack: backoff, DLQ routing, and pending retries across a restart."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from devtools.handler_server import HandlerServer, Reply
from devtools.kafka import produce, read_topic
from devtools.webhooks import conversation_webhook
from devtools.worker import WorkerProcess
from tests.conftest import Stack, Topics


def _by_key(plans: dict[str, Callable[[int], Reply]]) -> Callable[[dict[str, Any], int], Reply]:
    def plan(event: dict[str, Any], attempt: int) -> Reply:
        return plans.get(event["event_key"], lambda _a: Reply(200, {"ok": True}))(attempt)

    return plan


def test_transient_then_success_permanent_and_exhausted(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    plan = _by_key(
        {
            "wamid.flaky": lambda a: Reply(503) if a <= 2 else Reply(200, {"ok": a}),
            "wamid.rejected": lambda a: Reply(422, {"error": "unprocessable"}),
            "wamid.broken": lambda a: Reply(500, {"error": "boom"}),
        }
    )
    produce(
        stack.brokers,
        topics.inbound,
        [
            (b"a", conversation_webhook("w-a", "31611111", ["wamid.flaky"])),
            (b"b", conversation_webhook("w-b", "31622222", ["wamid.rejected"])),
            (b"c", conversation_webhook("w-c", "31633333", ["wamid.broken"])),
        ],
    )
    with HandlerServer(plan) as handler:
        start_worker(
            HANDLER_URL=handler.url, RETRY_DELAY_MS="300", MAX_RETRIES="3", RETRY_JITTER="0.2"
        )
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= 1, timeout_s=60
        )
        dlq = read_topic(stack.brokers, topics.dlq, until=lambda rs: len(rs) >= 2, timeout_s=60)

    (flaky,) = processed
    body = json.loads(flaky.value)
    assert body["event_key"] == "wamid.flaky"
    assert (body["attempts"], body["retries"]) == (3, 2)
    assert flaky.header("wa-attempts") == "3"

    letters = {r.header("wa-event-key"): r for r in dlq}
    rejected, broken = letters["wamid.rejected"], letters["wamid.broken"]
    assert rejected.header("wa-error-class") == "handler_permanent"
    assert rejected.header("wa-attempts") == "1" and rejected.header("wa-status-code") == "422"
    assert len(handler.calls_for("wamid.rejected")) == 1
    assert broken.header("wa-error-class") == "retries_exhausted"
    assert broken.header("wa-attempts") == "4"  # the first call and MAX_RETRIES=3 retries
    assert "HTTP 500" in (broken.header("wa-error-reason") or "")
    for name in (
        "wa-webhook-id",
        "wa-first-failure-at",
        "wa-last-failure-at",
        "wa-source-topic",
        "wa-source-partition",
        "wa-source-offset",
    ):
        assert broken.header(name), name
    assert broken.header("wa-source-topic") == topics.inbound
    # The DLQ carries the original envelope, untouched.
    assert json.loads(broken.value)["id"] == "w-c"

    # Backoff: 300 ms × 2^n, minus at most 20 % jitter, between successive calls.
    times = [c.at for c in handler.calls_for("wamid.broken")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    for n, gap in enumerate(gaps):
        expected = 0.3 * 2**n
        assert expected * 0.8 - 0.02 <= gap <= expected + 0.5, (n, gap)


def test_retry_after_is_honoured(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    plan = _by_key(
        {
            "wamid.limited": lambda a: (
                Reply(429, headers={"Retry-After": "2"}) if a == 1 else Reply(200, {})
            )
        }
    )
    produce(
        stack.brokers,
        topics.inbound,
        [(b"a", conversation_webhook("w-a", "31611111", ["wamid.limited"]))],
    )
    with HandlerServer(plan) as handler:
        start_worker(HANDLER_URL=handler.url, RETRY_DELAY_MS="100")
        read_topic(stack.brokers, topics.processed, until=lambda rs: len(rs) >= 1, timeout_s=60)
    first, second = handler.calls_for("wamid.limited")
    assert second.at - first.at >= 1.9


def test_pending_retries_survive_a_restart(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Stop the worker while retries wait; the restarted worker completes them."""
    keys = [f"wamid.r{i}" for i in range(5)]
    plan = _by_key(
        {k: (lambda a: Reply(503) if a == 1 else Reply(200, {"ok": True})) for k in keys}
    )
    produce(
        stack.brokers,
        topics.inbound,
        [
            (f"w{i}".encode(), conversation_webhook(f"w{i}", f"3160000{i}", [k]))
            for i, k in enumerate(keys)
        ],
    )
    with HandlerServer(plan) as handler:
        worker = start_worker(HANDLER_URL=handler.url, RETRY_DELAY_MS="6000", RETRY_JITTER="0")
        deadline = time.monotonic() + 60
        while len(handler.calls) < len(keys) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(handler.calls) == len(keys), worker.log()
        time.sleep(2.5)  # let an epoch snapshot the pending retries
        worker.kill()
        assert read_topic(stack.brokers, topics.processed) == []
        worker.start()
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= len(keys), timeout_s=60
        )
    assert sorted(str(r.header("wa-event-key")) for r in processed) == keys
    for key in keys:
        calls = handler.calls_for(key)
        assert [c.status for c in calls] == [503, 200], (key, calls)
        # Resumed on schedule (6 s after the failure), not started over from scratch.
        assert calls[1].at - calls[0].at >= 5.5
    assert all(json.loads(r.value)["attempts"] == 2 for r in processed)
