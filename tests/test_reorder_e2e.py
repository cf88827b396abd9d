"""Order within a conversation on the real stack, with records keyed by webhook id.

Keyed by webhook id (as an edge without a conversation key does), one conversation's webhooks
land on different partitions, which the worker reads independently: arrival order is not
Meta's order. The reorder window puts them back in Meta's timestamp order for the handler.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from devtools.handler_server import HandlerServer, Reply
from devtools.kafka import group_caught_up, read_topic
from devtools.webhooks import envelope, messages_value, payload, text_message
from devtools.worker import WorkerProcess
from tests.conftest import Stack, Topics
from tests.support.cli import run_cli

PARTITIONS = 3
T0 = 1_700_000_000
HANDLER_DELAY_S = 1.0  # a slow handler: the next event of a conversation waits for it


@pytest.fixture
def topic_partitions() -> int:
    return PARTITIONS


def webhook(conversation: int, index: int) -> tuple[str, bytes]:
    """Webhook `index` of a conversation: one message, Meta timestamp T0 + index."""
    wa_id = f"3165{conversation:04d}"
    wamid = f"wamid.c{conversation}.{index}"
    msg = {**text_message(wamid, wa_id), "timestamp": str(T0 + index)}
    webhook_id = f"w-c{conversation}-{index}"
    return webhook_id, envelope(webhook_id, payload(messages_value(messages=[msg], wa_id=wa_id)))


class Edge:
    """Publishes like an edge keyed by webhook id; the partition is chosen to spread one
    conversation over every partition (the default partitioner does so at random)."""

    def __init__(self, brokers: str, topic: str) -> None:
        self._producer = Producer({"bootstrap.servers": brokers, "linger.ms": 0})
        self._topic = topic

    def publish(self, webhook_id: str, value: bytes, partition: int) -> None:
        self._producer.produce(self._topic, value, webhook_id.encode(), partition=partition)
        if self._producer.flush(10):
            raise RuntimeError("produce did not complete")


def slow(event: dict[str, Any], attempt: int) -> Reply:
    return Reply(200, {"ok": True}, delay_s=HANDLER_DELAY_S)


def handled_order(handler: HandlerServer) -> dict[str, list[str]]:
    order: dict[str, list[str]] = {}
    for call in handler.calls:
        order.setdefault(call.conversation_key, []).append(call.event_key)
    return order


@pytest.mark.parametrize("workers", [1, 2])
def test_a_conversation_spread_over_partitions_reaches_a_slow_handler_in_timestamp_order(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess], workers: int
) -> None:
    edge = Edge(stack.brokers, topics.inbound)
    # A backlog read at start-up: three conversations, three webhooks each, published in
    # Meta's order, webhook i of each conversation on partition (PARTITIONS - 1 - i).
    backlog = range(3)
    for index in range(3):
        for conversation in backlog:
            edge.publish(*webhook(conversation, index), partition=PARTITIONS - 1 - index)
    with HandlerServer(slow) as handler:
        worker = start_worker(workers, HANDLER_URL=handler.url, REORDER_WINDOW_MS="2000")
        read_topic(stack.brokers, topics.processed, until=lambda rs: len(rs) >= 9, timeout_s=90)
        # Live traffic: Meta's later webhooks reach the worker first, each on its own
        # partition, 200 ms apart (less than the window).
        live = 7
        for index in (2, 1, 0):
            edge.publish(*webhook(live, index), partition=index)
            time.sleep(0.2)
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= 12, timeout_s=60
        )
        assert worker.running(), worker.log()
    order = handled_order(handler)
    for conversation in [*backlog, live]:
        wa_id = f"3165{conversation:04d}"
        (key,) = [k for k in order if k.endswith(wa_id)]
        assert order[key] == [f"wamid.c{conversation}.{i}" for i in range(3)], order
    assert len(processed) == 12
    assert all(json.loads(r.value)["result"] == {"ok": True} for r in processed)


def test_events_held_in_the_window_at_a_drain_are_handled_in_order_after_the_restart(
    stack: Stack, topics: Topics, redis_prefix: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The window is part of the conversation's snapshotted state: events held when the worker
    stops are neither lost nor re-read, and keep their order across the restart."""
    edge = Edge(stack.brokers, topics.inbound)
    for index in (2, 1, 0):  # Meta's latest first, one webhook per partition
        edge.publish(*webhook(5, index), partition=index)
    with HandlerServer() as handler:
        worker = start_worker(HANDLER_URL=handler.url, REORDER_WINDOW_MS="8000")
        # Caught up: a snapshot covers every input record, so the events are in the state.
        assert group_caught_up(stack.brokers, topics.inbound, f"{redis_prefix}group", PARTITIONS)
        assert worker.stop(signal.SIGTERM) == 0, worker.log()[-3000:]
        assert handler.calls == []  # held in the window until the drain, which starts nothing
        worker.start()
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= 3, timeout_s=60
        )
    assert [c.event_key for c in handler.calls] == [f"wamid.c5.{i}" for i in range(3)]
    assert sorted(r.header("wa-event-key") or "" for r in processed) == [
        f"wamid.c5.{i}" for i in range(3)
    ]


def test_replay_starts_a_conversations_events_in_timestamp_order_and_still_ends(
    tmp_path: Path,
) -> None:
    """`wa-worker replay` runs the same window: a capture holding one conversation's webhooks
    out of Meta's order is handled in Meta's order, and the run ends once all are done."""
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b"\n".join(webhook(3, index)[1] for index in (2, 0, 1)) + b"\n")
    with HandlerServer() as handler:
        result = run_cli(
            {
                "HANDLER_URL": handler.url,
                "REORDER_WINDOW_MS": "1000",
                "KAFKA_BROKERS": "127.0.0.1:9",  # no Kafka needed
            },
            "replay",
            str(capture),
            "-o",
            str(tmp_path / "out"),
            "--in-memory",
            "--json",
            module="wa_worker",
            timeout=120,
        )
    assert [c.event_key for c in handler.calls] == [f"wamid.c3.{i}" for i in range(3)]
    assert json.loads(result.stdout)["processed"] == 3
