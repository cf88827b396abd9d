"""Where the worker is in the inbound topic, made visible to Kafka tooling and Prometheus.

Bytewax keeps input offsets in its recovery snapshots, not in a consumer group, so lag
exporters (Burrow, kafka-exporter) see nothing. A reporter thread therefore commits the
snapshotted positions to the consumer group KAFKA_GROUP_ID (monitoring only: recovery stays the
source of truth, and nothing ever reads these commits back) and sets the consumer-lag gauge from
the positions read against the partitions' high watermarks.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from wa_worker.core import metrics

log = logging.getLogger(__name__)

PartitionId = tuple[str, int]


class PositionBook:
    """Positions (next offset to read) per partition, written by source partitions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: dict[PartitionId, int] = {}
        self._snapshotted: dict[PartitionId, int] = {}

    def read(self, partition: PartitionId, next_offset: int) -> None:
        with self._lock:
            self._read[partition] = next_offset

    def snapshotted(self, partition: PartitionId, next_offset: int) -> None:
        with self._lock:
            self._snapshotted[partition] = next_offset

    def views(self) -> tuple[dict[PartitionId, int], dict[PartitionId, int]]:
        with self._lock:
            return dict(self._read), dict(self._snapshotted)


class OffsetReporter:
    def __init__(
        self, book: PositionBook, consumer_config: dict[str, Any], group_id: str, interval_s: float
    ) -> None:
        self._book = book
        self._config = {
            **consumer_config,
            "group.id": group_id,
            "enable.auto.commit": False,
            "log_level": 3,
        }
        self._interval_s = interval_s
        self._committed: dict[PartitionId, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wa-offsets", daemon=True)

    def start(self) -> OffsetReporter:
        self._thread.start()
        # The last snapshot of a drained run is taken just before exit: report it too.
        atexit.register(self.stop)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        consumer = Consumer(self._config)
        try:
            while True:
                stopping = self._stop.wait(self._interval_s)
                consumer.poll(0)  # never consumes: this hands librdkafka's log lines over
                fresh = True
                try:
                    fresh = self.report(consumer)
                except Exception as exc:  # noqa: BLE001  (monitoring must never stop the worker)
                    log.debug("offset report failed: %s", exc)
                if stopping:
                    return
                if not fresh:
                    # A client that assigns nothing keeps a dead leader in its metadata for
                    # good (_UNKNOWN_PARTITION each round, seen after a kill -9): a new client
                    # asks the cluster again.
                    consumer.close()
                    consumer = Consumer(self._config)
        finally:
            consumer.close()

    def report(self, consumer: Consumer) -> bool:
        """Commit what was snapshotted and set the lag gauge; False when some partition's
        watermark could not be read."""
        fresh = True
        read, snapshotted = self._book.views()
        changed = [
            TopicPartition(t, p, o)
            for (t, p), o in snapshotted.items()
            if self._committed.get((t, p)) != o
        ]
        if changed:
            consumer.commit(offsets=changed, asynchronous=False)
            self._committed.update({(tp.topic, tp.partition): tp.offset for tp in changed})
        for (topic, partition), position in read.items():
            try:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=2, cached=False
                )
            except KafkaException as exc:
                # A partition between leaders (a broker failover, a new topic) keeps its last
                # lag until the next round; the other partitions are still measured.
                log.debug("no watermark for %s[%d]: %s", topic, partition, exc)
                fresh = False
                continue
            metrics.CONSUMER_LAG.labels(topic, str(partition)).set(max(0, high - position))
        return fresh
