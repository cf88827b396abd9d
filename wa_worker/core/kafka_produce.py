"""Producing one record without losing it to a full local queue."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Producer


def produce_waiting(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
    on_delivery: Callable[..., Any] | None = None,
    wait_s: float = 0.05,
) -> None:
    """`produce`, waiting while librdkafka's local queue is full (BufferError) for deliveries
    to drain it. Other errors (a record refused before queueing) are the caller's."""
    while True:
        try:
            producer.produce(topic, value, key, headers=list(headers), on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(wait_s)
