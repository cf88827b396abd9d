"""Writes processed and dead-letter records to Kafka, then marks their events done in Redis.

Bytewax's own KafkaSink ignores delivery failures; this one does not. Each batch is produced
with an idempotent producer and flushed; a record Kafka did not acknowledge raises
`DeliveryError`, which stops the dataflow so recovery replays the batch rather than losing it.
Only after Kafka acknowledged a batch are its events marked done (crash-safe dedupe); the
markers go to Redis through the I/O runtime, batched with claims, so this thread never waits
on Redis (and a Redis outage only delays them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Message, Producer

from sinks.records import KafkaRecord
from wa_worker import metrics
from wa_worker.dedupe import DoneMark
from wa_worker.errors import DeliveryError
from wa_worker.kafka_produce import produce_waiting

log = logging.getLogger(__name__)


class DoneMarks(Protocol):
    def mark_done(self, marks: list[DoneMark]) -> None: ...


class _KafkaOutcomePartition(StatelessSinkPartition[KafkaRecord]):
    def __init__(self, producer: Producer, marks: DoneMarks, flush_timeout_s: float) -> None:
        self._producer = producer
        self._marks = marks
        self._flush_timeout_s = flush_timeout_s

    def write_batch(self, items: list[KafkaRecord]) -> None:
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(f"{msg.topic()}: {err}")

        for record in items:
            self._produce(record, on_delivery)
        remaining = self._flush()
        if remaining or failures:
            raise DeliveryError(
                f"Kafka did not acknowledge {remaining + len(failures)} of {len(items)} records: "
                + "; ".join(failures[:3])
            )
        self._observe(items)
        self._marks.mark_done([r.done for r in items if r.done is not None])

    def close(self) -> None:
        self._flush()

    def _flush(self) -> int:
        """Wait for every delivery report. While the broker is away librdkafka keeps retrying
        (up to message.timeout.ms) and this waits: the worker stalls rather than lose or
        re-order records. Returns how many are still unacknowledged at the deadline."""
        deadline = time.monotonic() + self._flush_timeout_s
        remaining = self._producer.flush(min(1.0, self._flush_timeout_s))
        while remaining and time.monotonic() < deadline:
            log.warning("waiting for Kafka to acknowledge %d records", remaining)
            remaining = self._producer.flush(min(5.0, max(0.0, deadline - time.monotonic())))
        return int(remaining)

    def _produce(self, record: KafkaRecord, on_delivery: Callable[..., None]) -> None:
        produce_waiting(
            self._producer, record.topic, record.value, record.key, record.headers, on_delivery
        )

    @staticmethod
    def _observe(items: list[KafkaRecord]) -> None:
        now = datetime.now(UTC)
        for record in items:
            if record.error_class is not None:
                metrics.DEAD_LETTERED.labels(record.error_class).inc()
                log.warning("dead-lettered", extra=record.log_context())
            elif record.kind is not None:
                metrics.PROCESSED.labels(record.kind).inc()
            if record.received_at is not None:
                metrics.END_TO_END_LATENCY.observe(
                    max(0.0, (now - record.received_at).total_seconds())
                )


class KafkaOutcomeSink(DynamicSink[KafkaRecord]):
    def __init__(
        self,
        producer_config: dict[str, Any],
        marks: Callable[[], DoneMarks],
        flush_timeout_s: float,
    ) -> None:
        self._producer_config = producer_config
        self._marks = marks  # the I/O runtime, started lazily in the process that writes
        self._flush_timeout_s = flush_timeout_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaOutcomePartition:
        config = {**self._producer_config, "client.id": f"wa-worker-{worker_index}"}
        return _KafkaOutcomePartition(Producer(config), self._marks(), self._flush_timeout_s)
