"""Small Kafka helpers for tests and tools: produce envelopes, read a topic to the end."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    partition: int
    offset: int
    timestamp_ms: int = 0  # the producer's create time

    def header(self, name: str) -> str | None:
        raw = self.headers.get(name)
        return raw.decode() if raw is not None else None


def produce(
    brokers: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    config: Mapping[str, str] | None = None,
) -> int:
    """`config`: extra librdkafka options (a SASL_SSL cluster's), here and below."""
    producer = Producer(
        {
            **(config or {}),
            "bootstrap.servers": brokers,
            "message.max.bytes": 5_242_880,
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    failures: list[str] = []
    count = 0

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
    if producer.flush(30) or failures:
        raise RuntimeError(f"produce to {topic} failed: {failures[:3]}")
    return count


def read_topic(
    brokers: str,
    topic: str,
    until: Callable[[list[Record]], bool] | None = None,
    timeout_s: float = 60.0,
    settle_s: float = 1.0,
    config: Mapping[str, str] | None = None,
) -> list[Record]:
    """Read every partition from the start. Stop when `until(records)` holds (then read a little
    longer to catch strays), or at the end of the topic when `until` is None, or at the timeout."""
    consumer = Consumer(
        {
            **(config or {}),
            "bootstrap.servers": brokers,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 20_000_000,
            "receive.message.max.bytes": 20_001_000,
            "enable.partition.eof": True,
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    records: list[Record] = []
    at_eof: set[int] = set()
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None:
                error = msg.error()
                partition, offset = msg.partition() or 0, msg.offset() or 0
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_eof.add(partition)
                    continue
                at_eof.discard(partition)
                headers = {
                    k: v if isinstance(v, bytes) else str(v or "").encode()
                    for k, v in _pairs(msg.headers())
                }
                _, created = msg.timestamp()
                records.append(
                    Record(msg.key(), msg.value() or b"", headers, partition, offset, created)
                )
            if until is None:
                if len(at_eof) == len(meta.partitions):
                    break
            elif settle_until is None and until(records):
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() > settle_until:
                break
    finally:
        consumer.close()
    return records


def _pairs(headers: object) -> list[tuple[str, object]]:
    if isinstance(headers, dict):
        return list(headers.items())
    if isinstance(headers, list | tuple):
        return [(str(name), value) for name, value in headers]
    return []


def group_caught_up(
    brokers: str,
    topic: str,
    group: str,
    partitions: int,
    timeout_s: float = 20,
    config: Mapping[str, str] | None = None,
) -> bool:
    """The group's committed offsets reach the high watermarks within the time. The worker
    commits its snapshotted input positions there: caught up means the recovery snapshot
    covers every input record (and lag exporters see zero)."""
    consumer = Consumer({**(config or {}), "bootstrap.servers": brokers, "group.id": group})
    assigned = [TopicPartition(topic, p) for p in range(partitions)]
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            committed = [tp.offset for tp in consumer.committed(assigned, timeout=10)]
            high = [consumer.get_watermark_offsets(tp, timeout=5)[1] for tp in assigned]
            if committed == high:
                return True
            time.sleep(0.5)
        return False
    finally:
        consumer.close()
