"""Look into the dead-letter topic, send records back through the worker, replay captures."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from wa_worker.settings import Settings


@dataclass(frozen=True)
class DeadLetterRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def event_key(self) -> str | None:
        return self.headers.get("wa-event-key")

    @property
    def error_class(self) -> str:
        return self.headers.get("wa-error-class", "")

    def summary(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "offset": self.offset,
            **{k.removeprefix("wa-"): v for k, v in self.headers.items()},
            "bytes": len(self.value),
        }


def read_dead_letters(settings: Settings) -> Iterator[DeadLetterRecord]:
    """Every record on the DLQ topic, oldest first per partition (reads, commits nothing)."""
    consumer = Consumer(
        {
            **settings.consumer_config(),
            "bootstrap.servers": settings.kafka_brokers,
            "group.id": f"wa-worker-dlq-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    topic = settings.kafka_dlq_topic
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        remaining = set(partitions)
        while remaining:
            msg = consumer.poll(5.0)
            if msg is None:
                break
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(msg.partition() or 0)
                    continue
                raise RuntimeError(f"reading {topic}: {error}")
            raw_headers = msg.headers() or []
            pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
            headers = {
                k: v.decode(errors="replace") if isinstance(v, bytes) else str(v or "")
                for k, v in pairs
            }
            yield DeadLetterRecord(
                msg.partition() or 0, msg.offset() or 0, msg.key(), msg.value() or b"", headers
            )
    finally:
        consumer.close()


def select(
    records: Iterable[DeadLetterRecord],
    error_class: str | None = None,
    event_key: str | None = None,
    webhook_id: str | None = None,
) -> list[DeadLetterRecord]:
    return [
        r
        for r in records
        if (error_class is None or r.error_class == error_class)
        and (event_key is None or r.event_key == event_key)
        and (webhook_id is None or r.headers.get("wa-webhook-id") == webhook_id)
    ]


def publish(
    settings: Settings, records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
) -> int:
    """Write envelopes to the inbound topic; raise unless Kafka acknowledged every one."""
    producer = Producer(settings.producer_config())
    failures: list[str] = []
    count = 0

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    for key, value, headers in records:
        producer.produce(
            settings.kafka_inbound_topic, value, key, headers=list(headers), on_delivery=on_delivery
        )
        count += 1
        producer.poll(0)
    remaining = producer.flush(settings.kafka_flush_timeout_s)
    if remaining or failures:
        raise RuntimeError(
            f"Kafka did not acknowledge {remaining + len(failures)} records: {failures[:3]}"
        )
    return count


def redrive_records(
    records: list[DeadLetterRecord],
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """The DLQ records as inbound records again, marked with where they came from."""
    return [
        (r.key, r.value, [("wa-redriven-from", f"{r.partition}:{r.offset}".encode())])
        for r in records
    ]


def captured_envelopes(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """JSON lines of captured webhooks: full envelopes `{id, headers, body, timestamp}`, or bare
    Meta payloads (`{"object": …, "entry": …}`), which get an envelope around them."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
        if isinstance(data, dict) and "body" in data and "id" in data:
            envelope = data
        else:
            envelope = {
                "id": f"replay-{path.stem}-{number}",
                "headers": {},
                "body": data,
                "timestamp": datetime.now(UTC).isoformat(),
            }
        yield str(envelope["id"]).encode(), json.dumps(envelope).encode()
