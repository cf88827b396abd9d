"""Writes processed and dead-letter records to Kafka, then marks their events done in Redis.

Bytewax's own KafkaSink ignores delivery failures; this one does not. Records are produced with
an idempotent producer and each one's delivery report is tracked; a record Kafka did not
acknowledge raises `DeliveryError`, which stops the dataflow so recovery replays it rather than
losing it. A record Kafka refuses for itself (too large, say: refused again after every restart)
is not that: a processed record is replaced by its event's `result_unwritable` dead letter, a
dead letter by its headers alone, and the rest goes on.

A batch does not wait for its acknowledgements: the next one is produced meanwhile (on a
3-broker cluster with acks=all a wait per batch halved the worker's rate). What must wait does:
an event is marked done only once Kafka acknowledged its record (crash-safe dedupe), and the
epoch's snapshot waits for every record written in the epoch, so Bytewax never commits an input
offset past a record Kafka does not have. Hence a FixedPartitionedSink with one partition per
process, written by its own workers (no records cross processes). The done markers go to Redis
through the I/O runtime, batched with claims, so this thread never waits on Redis.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
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


class _KafkaOutcomePartition(StatefulSinkPartition[KafkaRecord, None]):
    def __init__(self, producer: Producer, marks: DoneMarks, flush_timeout_s: float) -> None:
        self._producer = producer
        self._marks = marks
        self._flush_timeout_s = flush_timeout_s
        # Delivery reports arrive in poll()/flush(), on this thread: plain lists will do.
        self._unreported = 0  # produced, no report yet
        self._since_settled = 0  # produced since everything was last acknowledged
        self._acknowledged: list[KafkaRecord] = []  # not marked done yet
        self._refused: list[tuple[KafkaRecord, str]] = []
        self._failures: list[str] = []
        self._started_ns = time.time_ns()  # the first write of the records not marked done yet

    def write_batch(self, items: list[KafkaRecord]) -> None:
        self._send(items)
        self._producer.poll(0)  # the reports of earlier batches, without waiting
        self._settle()

    def snapshot(self) -> None:
        """The epoch's end. Bytewax commits the epoch's input offsets once every snapshot is
        in, so whatever was written in it must be acknowledged first."""
        self._drain()

    def close(self) -> None:
        self._drain()

    def _send(self, records: list[KafkaRecord]) -> None:
        if not self._unreported:
            self._started_ns = time.time_ns()
        for record in records:
            try:
                self._produce(record, partial(self._on_delivery, record))
            except KafkaException as exc:  # refused before queueing
                error: KafkaError = exc.args[0]
                if error.code() not in RECORD_REFUSALS:
                    raise DeliveryError(f"Kafka refused a {record.topic} record: {error}") from exc
                self._refused.append((record, error.str()))
            else:
                self._unreported += 1
                self._since_settled += 1

    def _on_delivery(self, record: KafkaRecord, err: KafkaError | None, msg: Message) -> None:
        self._unreported -= 1
        if err is None:
            self._acknowledged.append(record)
        elif err.code() in RECORD_REFUSALS:
            self._refused.append((record, err.str()))
        else:
            self._failures.append(f"{msg.topic()}: {err}")

    def _settle(self, unacknowledged: int = 0) -> None:
        """Act on the reports so far: raise DeliveryError on a failure (or records still
        unacknowledged at the deadline), write what replaces a refused record, and mark the
        acknowledged ones done."""
        if unacknowledged or self._failures:
            raise DeliveryError(
                f"Kafka did not acknowledge {unacknowledged + len(self._failures)} of "
                f"{self._since_settled} records: " + "; ".join(self._failures[:3])
            )
        if self._refused:  # each round writes what the last one had refused, made smaller
            refused, self._refused = self._refused, []
            self._send([_instead(record, reason) for record, reason in refused])
        if self._acknowledged:
            written, self._acknowledged = self._acknowledged, []
            self._observe(written)
            if tracing.ENABLED:
                tracing.written(written, "produce", self._started_ns)
            self._marks.mark_done([r.done for r in written if r.done is not None])
        if not self._unreported:
            self._since_settled = 0

    def _drain(self) -> None:
        """Wait for every delivery report, replacements of refused records included."""
        deadline = time.monotonic() + self._flush_timeout_s
        while True:
            remaining = self._flush(deadline)
            # Once flush() reports none left, every report is in: a record still unreported
            # would never be, so it counts as unacknowledged (never a silent loop).
            self._settle(max(remaining, self._unreported))
            if not self._unreported and not self._refused:
                return

    def _flush(self, deadline: float) -> int:
        """Wait for the delivery reports. While the broker is away librdkafka keeps retrying
        (up to message.timeout.ms) and this waits: the worker stalls rather than lose or
        re-order records. Returns how many are still unacknowledged at the deadline."""
        remaining = self._producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
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
        processed: Counter[str] = Counter()  # one inc per kind and batch: labels() is dear
        latencies: list[float] = []
        for record in items:
            if record.error_class is not None:
                metrics.DEAD_LETTERED.labels(record.error_class).inc()
                log.warning("dead-lettered", extra=record.log_context())
            elif record.kind is not None:
                processed[record.kind] += 1
            if record.received_at is not None:
                latencies.append((now - record.received_at).total_seconds())
        for kind, count in processed.items():
            metrics.PROCESSED.labels(kind).inc(count)
        metrics.observe_all(metrics.END_TO_END_LATENCY, latencies)


def _instead(record: KafkaRecord, why: str) -> KafkaRecord:
    """What to write in place of a record Kafka refused; raise when nothing smaller is left."""
    if record.unwritable is not None:
        return record.unwritable(f"Kafka refused the processed record: {why}")
    if record.error_class is not None and record.value:
        return without_envelope(record, f"Kafka refused the dead letter: {why}")
    raise DeliveryError(f"Kafka refused a {record.topic} record even without its value: {why}")


# Partition names the sink lists: process ids, so a resumed run with fewer processes still
# has a worker for each partition snapshotted before (Bytewax panics on a load nobody lists).
# No cluster has this many processes.
PARTITION_NAMES = 1024


class KafkaOutcomeSink(FixedPartitionedSink[KafkaRecord, None]):
    """One partition per process (`process_index`: Bytewax's process id, the composition
    root's to find), the one every record of the process is routed to: its workers share it,
    no record crosses processes. Process 0 also lists the names no process of this run has
    (`process_count`), which only ever hold an earlier run's snapshots."""

    def __init__(
        self,
        producer_config: dict[str, Any],
        marks: Callable[[], DoneMarks],
        flush_timeout_s: float,
        process_index: int = 0,
        process_count: int = 1,
    ) -> None:
        self._producer_config = producer_config
        self._marks = marks  # the I/O runtime, started lazily in the process that writes
        self._flush_timeout_s = flush_timeout_s
        # Wrong figures cost speed, never records: a name two processes list gets one primary,
        # and records routed to another process are written there.
        self._index = process_index
        self._count = process_count

    def list_parts(self) -> list[str]:
        # Zero-padded: sorted, every name's index is the process id it names.
        if self._index != 0:
            return [f"{self._index:05d}"]
        unused = range(max(self._count, 1), max(PARTITION_NAMES, self._count))
        return [f"{0:05d}", *(f"{i:05d}" for i in unused)]

    def part_fn(self, item_key: str) -> int:
        # The index into every process's partitions, sorted: this process's own.
        return self._index

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _KafkaOutcomePartition:
        config = {**self._producer_config, "client.id": f"wa-worker-{int(for_part)}"}
        return _KafkaOutcomePartition(Producer(config), self._marks(), self._flush_timeout_s)
