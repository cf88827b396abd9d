"""What the stand-alone contestants share: arguments and Kafka client settings."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from wa_worker.core.kafka_produce import produce_waiting

MAX_MESSAGE_BYTES = 5_242_880


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--inbound", required=True)
    parser.add_argument("--processed", required=True)
    parser.add_argument("--dlq", default="")
    parser.add_argument("--expect", type=int, required=True, help="inbound records to consume")
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--redis-prefix", default="bench:")
    parser.add_argument("--handler-url", default="", help="POST each event here (else no-op)")
    return parser.parse_args()


def consumer(args: argparse.Namespace, group: str) -> Consumer:
    """Every inbound partition from the start; assigned, not subscribed: no rebalance wait."""
    client = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": MAX_MESSAGE_BYTES * 2,
            "receive.message.max.bytes": MAX_MESSAGE_BYTES * 2 + 512,
            "log_level": 0,
        }
    )
    partitions = client.list_topics(args.inbound, timeout=10).topics[args.inbound].partitions
    client.assign([TopicPartition(args.inbound, p, 0) for p in partitions])
    return client


def producer(args: argparse.Namespace, **overrides: Any) -> Producer:
    """The worker's producer settings (durable: idempotent, acks=all)."""
    return Producer(
        {
            "bootstrap.servers": args.brokers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "log_level": 0,
            **overrides,
        }
    )


class Deliveries:
    """Delivery callback that remembers failures: a record Kafka refused fails the run."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.failures.append(str(err))

    def check(self, unflushed: int) -> None:
        if unflushed or self.failures:
            sys.exit(f"produce failed: {unflushed} unflushed, {self.failures[:3]}")


def readable(msg: Message) -> bool:
    """A record, not a consumer event; errors other than end-of-partition are fatal here."""
    error = msg.error()
    if error is None:
        return True
    if error.code() != KafkaError._PARTITION_EOF:
        sys.exit(f"consumer error: {error}")
    return False


def produce(
    client: Producer,
    topic: str,
    value: bytes,
    key: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
    on_delivery: Deliveries,
) -> None:
    produce_waiting(client, topic, value, key, headers or (), on_delivery, wait_s=0.01)
