"""End to end on the real stack: the dataflow as a `bytewax.run` subprocess."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis

from devtools.handler_server import HandlerServer
from devtools.kafka import produce, read_topic
from devtools.webhooks import (
    PHONE_NUMBER_ID,
    conversation_webhook,
    envelope,
    messages_value,
    payload,
    status,
    text_message,
)
from devtools.worker import WorkerProcess
from tests.conftest import Stack, Topics
from tests.support.markers import marker_state
from wa_worker.core.dedupe import MarkerState

POISON = [
    b"not json at all",
    b'{"id": "w-bad-1", "headers": {}, "timestamp": "2026-01-01T00:00:00Z"}',  # no body
    envelope("w-bad-2", {"object": "page", "entry": [{"id": "1", "changes": []}]}),
    envelope("w-bad-3", '{"object": "whatsapp_business_account", "entry": [{"id": 1'),
]


@pytest.mark.parametrize("workers", [1, 2])
def test_every_unique_event_once_duplicates_dropped_poison_dead_lettered(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess], workers: int
) -> None:
    webhooks = 300
    records: list[tuple[bytes | None, bytes]] = []
    unique: set[str] = set()
    for i in range(webhooks):
        wa_id = f"3162{i % 40:04d}"
        wamids = [f"wamid.{i}.{j}" for j in range(3)]
        unique.update(wamids)
        records.append((f"w{i}".encode(), conversation_webhook(f"w{i}", wa_id, wamids)))
        # Meta redelivers: every 10th webhook again, under a new webhook id.
        if i % 10 == 0:
            records.append((f"w{i}r".encode(), conversation_webhook(f"w{i}r", wa_id, wamids)))
    statuses = payload(
        messages_value(
            statuses=[status("wamid.out.1", "31620000", s) for s in ("sent", "delivered", "read")]
        )
    )
    records.append((b"ws", envelope("ws", statuses)))
    unique.update({"wamid.out.1:sent", "wamid.out.1:delivered", "wamid.out.1:read"})
    records += [(b"poison", p) for p in POISON]
    produce(stack.brokers, topics.inbound, records)

    with HandlerServer() as handler:
        started = time.monotonic()
        worker = start_worker(workers=workers, HANDLER_URL=handler.url)
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= len(unique), timeout_s=120
        )
        elapsed = time.monotonic() - started
        dlq = read_topic(
            stack.brokers, topics.dlq, until=lambda rs: len(rs) >= len(POISON), timeout_s=30
        )
        assert worker.running(), worker.log()

    keys = Counter(r.header("wa-event-key") for r in processed)
    assert set(keys) == unique, (
        sorted(unique - set(keys))[:10],
        [k for k, n in keys.items() if n > 1][:10],
    )
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]
    # Each unique event reached the handler once, with its key as Idempotency-Key.
    handled = Counter(c.event_key for c in handler.calls)
    assert set(handled) == unique and max(handled.values()) == 1
    assert all(c.idempotency_key == c.event_key for c in handler.calls)

    sample = json.loads(processed[0].value)
    assert {"event_key", "webhook_id", "kind", "event", "result", "attempts"} <= set(sample)
    assert sample["result"]["ok"] is True
    assert processed[0].key == sample["conversation_key"].encode()

    assert sorted(r.value for r in dlq) == sorted(POISON)
    assert all(r.header("wa-error-reason") for r in dlq)
    assert {r.header("wa-error-class") for r in dlq} <= {
        "invalid_json",
        "invalid_envelope",
        "invalid_payload",
    }
    events_per_s = len(unique) / elapsed
    print(
        f"\nend-to-end: {len(unique)} unique events from {len(records)} records "
        f"in {elapsed:.1f}s incl. start-up = {events_per_s:.0f} events/s"
    )


def test_order_kept_within_a_conversation_while_others_proceed(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A conversation stuck in retry holds only itself; its own events stay in order."""
    from devtools.handler_server import Reply

    def plan(event: dict[str, object], attempt: int) -> Reply:
        if event["event_key"] == "wamid.slow.0" and attempt <= 2:
            return Reply(503)
        return Reply(200, {"ok": True})

    slow = conversation_webhook("w-slow", "31600001", [f"wamid.slow.{j}" for j in range(4)])
    fast = [
        conversation_webhook(f"w-fast{i}", f"3170000{i}", [f"wamid.fast.{i}.{j}" for j in range(3)])
        for i in range(5)
    ]
    produce(stack.brokers, topics.inbound, [(b"slow", slow)] + [(b"f", f) for f in fast])
    with HandlerServer(plan) as handler:
        start_worker(HANDLER_URL=handler.url, RETRY_DELAY_MS="1500")
        read_topic(stack.brokers, topics.processed, until=lambda rs: len(rs) >= 19, timeout_s=90)
    calls = handler.calls
    ok_order = [c.event_key for c in calls if c.status == 200]
    slow_ok = [k for k in ok_order if k.startswith("wamid.slow")]
    assert slow_ok == [f"wamid.slow.{j}" for j in range(4)]
    # Every fast conversation finished before the slow one's head succeeded (two 1.5 s+ waits).
    first_slow_ok = ok_order.index("wamid.slow.0")
    assert all(k.startswith("wamid.fast") for k in ok_order[:first_slow_ok])
    assert first_slow_ok == 15
    for i in range(5):
        fast_keys = [k for k in ok_order if k.startswith(f"wamid.fast.{i}.")]
        assert fast_keys == [f"wamid.fast.{i}.{j}" for j in range(3)]


def test_a_bad_event_is_dead_lettered_alone_and_type_slips_are_coerced(
    stack: Stack,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    """One webhook: a message with a numeric timestamp, a broken one, a good one. Another: a
    status with numeric timestamp and phone_number_id. A third: an envelope timestamp that is
    no time. Everything usable reaches the handler; only the broken message is dead-lettered,
    under its own key, and its dedupe marker says so (a re-drive resets it)."""
    wa_id = "31650001"
    numeric = {**text_message("wamid.num", wa_id), "timestamp": 1700000000}
    broken = {**text_message("wamid.bad", wa_id), "text": 42}
    mixed = envelope(
        "w-mixed",
        payload(messages_value([numeric, broken, text_message("wamid.ok", wa_id)], wa_id=wa_id)),
    )
    read = {**status("wamid.out.9", wa_id, "read"), "timestamp": 1700000002}
    value = messages_value(statuses=[read])
    value["metadata"]["phone_number_id"] = int(PHONE_NUMBER_ID)
    undated = json.loads(
        envelope("w-undated", payload(messages_value([text_message("wamid.undated", wa_id)])))
    )
    undated["timestamp"] = "yesterday"
    produce(
        stack.brokers,
        topics.inbound,
        [
            (b"w-mixed", mixed),
            (b"w-status", envelope("w-status", payload(value))),
            (b"w-undated", json.dumps(undated).encode()),
        ],
    )
    with HandlerServer() as handler:
        worker = start_worker(HANDLER_URL=handler.url)
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= 4, timeout_s=90
        )
        dlq = read_topic(stack.brokers, topics.dlq, until=lambda rs: len(rs) >= 1, timeout_s=30)
        assert worker.running(), worker.log()

    events = {r.header("wa-event-key") or "": json.loads(r.value)["event"] for r in processed}
    assert sorted(events) == ["wamid.num", "wamid.ok", "wamid.out.9:read", "wamid.undated"]
    assert events["wamid.num"]["coerced"] == ["payload.timestamp"]
    assert events["wamid.num"]["payload"]["timestamp"] == "1700000000"
    assert events["wamid.ok"]["coerced"] == []
    assert events["wamid.out.9:read"]["coerced"] == [
        "value_context.metadata.phone_number_id",
        "payload.timestamp",
    ]
    assert events["wamid.out.9:read"]["phone_number_id"] == PHONE_NUMBER_ID
    assert events["wamid.undated"]["coerced"] == ["received_at"]
    received = datetime.fromisoformat(events["wamid.undated"]["received_at"])
    assert abs(received - datetime.now(UTC)) < timedelta(minutes=5)  # the record's Kafka time
    assert sorted(c.event_key for c in handler.calls) == sorted(events)

    (letter,) = dlq
    assert letter.header("wa-event-key") == "wamid.bad"
    assert letter.header("wa-error-class") == "invalid_payload"
    assert (letter.header("wa-error-reason") or "").startswith("invalid message: messages.1.text")
    assert letter.header("wa-webhook-id") == "w-mixed"
    assert letter.value == mixed  # the original bytes, as for any dead letter
    deadline = time.monotonic() + 15
    state = marker_state(redis_client, redis_prefix, "wamid.bad")
    while state is not MarkerState.DEAD_LETTERED and time.monotonic() < deadline:
        time.sleep(0.2)
        state = marker_state(redis_client, redis_prefix, "wamid.bad")
    assert state is MarkerState.DEAD_LETTERED
