"""Writes processed and dead-letter records to Kafka, then marks their events done in Redis.

Bytewax's own KafkaSink ignores delivery failures; this one does not. Each batch is produced
with an idempotent producer and flushed; a record Kafka did not acknowledge raises
`DeliveryError`, which stops the dataflow so recovery replays the batch rather than losing it.
A record Kafka refuses for itself (too large, say: refused again after every restart) is not
that: a processed record is replaced by its event's `result_unwritable` dead letter, a dead
letter by its headers alone, and the rest of the batch goes on.
Only after Kafka acknowledged a batch are its events marked done (crash-safe dedupe); the
markers go to Redis through the I/O runtime, batched with claims, so this thread never waits
on Redis (and a Redis outage only delays them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from wa_worker.core import metrics, tracing
from wa_worker.core.dedupe import DoneMark
from wa_worker.core.kafka_produce import produce_waiting
from wa_worker.errors import DeliveryError
from wa_worker.sinks.records import KafkaRecord, without_envelope

log = logging.getLogger(__name__)

# Errors that refuse one record (its size or content), not Kafka as a whole. Any other error
# (timeouts, broker down, authorisation) stops the worker: recovery replays the batch.
RECORD_REFUSALS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError.POLICY_VIOLATION,
    }
)


class DoneMarks(Protocol):
    def mark_done(self, marks: list[DoneMark]) -> None: ...


class _KafkaOutcomePartition(StatelessSinkPartition[KafkaRecord]):
    def __init__(self, producer: Producer, marks: DoneMarks, flush_timeout_s: float) -> None:
        self._producer = producer
        self._marks = marks
        self._flush_timeout_s = flush_timeout_s

    def write_batch(self, items: list[KafkaRecord]) -> None:
        started_ns = time.time_ns()
        written: list[KafkaRecord] = []
        pending = items
        while pending:  # each round writes what the last one had refused, made smaller
            refused = self._send(pending)
            written.extend(r for i, r in enumerate(pending) if i not in refused)
            pending = [_instead(pending[i], reason) for i, reason in refused.items()]
        self._observe(written)
        if tracing.ENABLED:
            tracing.written(written, "produce", started_ns)
        self._marks.mark_done([r.done for r in written if r.done is not None])

    def _send(self, records: list[KafkaRecord]) -> dict[int, str]:
        """Produce and flush; the records Kafka refused (by index, with why). Raise
        DeliveryError when Kafka failed (unacknowledged in time, or any other error)."""
        refused: dict[int, str] = {}
        failures: list[str] = []

        def on_delivery(index: int, err: KafkaError | None, msg: Message) -> None:
            if err is None:
                return
            if err.code() in RECORD_REFUSALS:
                refused[index] = err.str()
            else:
                failures.append(f"{msg.topic()}: {err}")

        for index, record in enumerate(records):
            try:
                self._produce(record, partial(on_delivery, index))
            except KafkaException as exc:  # refused before queueing
                error: KafkaError = exc.args[0]
                if error.code() not in RECORD_REFUSALS:
                    raise DeliveryError(f"Kafka refused a {record.topic} record: {error}") from exc
                refused[index] = error.str()
        remaining = self._flush()
        if remaining or failures:
            raise DeliveryError(
                f"Kafka did not acknowledge {remaining + len(failures)} of {len(records)} "
                "records: " + "; ".join(failures[:3])
            )
        return refused

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


def _instead(record: KafkaRecord, why: str) -> KafkaRecord:
    """What to write in place of a record Kafka refused; raise when nothing smaller is left."""
    if record.unwritable is not None:
        return record.unwritable(f"Kafka refused the processed record: {why}")
    if record.error_class is not None and record.value:
        return without_envelope(record, f"Kafka refused the dead letter: {why}")
    raise DeliveryError(f"Kafka refused a {record.topic} record even without its value: {why}")


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
