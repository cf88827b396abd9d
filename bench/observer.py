"""Reads a contestant's processed topic as records arrive: counts them, keeps the first and
last broker timestamps and, for latency runs, when each webhook id was first seen."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping

from confluent_kafka import Consumer, TopicPartition

from bench.procstats import Sample, Sampler


class Observer:
    def __init__(
        self,
        brokers: str,
        topic: str,
        sampler: Sampler | None = None,
        track_ids: bool = False,
        config: Mapping[str, str] | None = None,  # a SASL_SSL cluster's options
        fetch_wait_ms: int = 100,  # bench.observer_cost compares it with the old 5 ms
    ) -> None:
        self._consumer = Consumer(
            {
                **(config or {}),
                "bootstrap.servers": brokers,
                "group.id": f"bench-observer-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                # A broker answers a fetch as soon as it has a byte for it (fetch.min.bytes),
                # so a long poll delays no record; it only spares fetches while there is none.
                # At 5 ms, an idle reader cost the 3-broker SASL_SSL cluster 1.1-1.6 cores of
                # this 2-core machine more than no reader (bench/observer_cost.py), taken from
                # the contestant.
                "fetch.wait.max.ms": fetch_wait_ms,
                "fetch.min.bytes": 1,
                # Should the position ever be reset, "latest" would skip what was written
                # before; the topic is this run's own, so its start is right.
                "auto.offset.reset": "earliest",
                "log_level": 0,
            }
        )
        partitions = _partitions(self._consumer, topic)
        self._consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        self._sampler = sampler
        self._track_ids = track_ids
        # Latency runs stamp a record when consume() returns it, which waits up to this long
        # for a full batch; throughput runs read broker timestamps and can wait.
        self._poll_s = 0.002 if track_ids else 0.05
        self.count = 0
        self.first_ts_ms: int | None = None
        self.last_ts_ms: int | None = None
        self.first_seen: float | None = None  # perf_counter
        self.last_progress = time.perf_counter()
        self.received: dict[bytes, float] = {}  # webhook id -> perf_counter when first seen
        self.target: int | None = None  # the output count at which to take the final sample
        self.first_sample: Sample | None = None
        self.final_sample: Sample | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Observer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            # consume() waits for a full batch or the timeout: a long timeout would add up to
            # that much to every latency measured here.
            batch = self._consumer.consume(1000, self._poll_s)
            if not batch:
                continue
            now = time.perf_counter()
            for msg in batch:
                if msg.error() is not None:
                    continue
                self.count += 1
                stamp = msg.timestamp()[1]
                if self.first_ts_ms is None or stamp < self.first_ts_ms:
                    self.first_ts_ms = stamp
                if self.last_ts_ms is None or stamp > self.last_ts_ms:
                    self.last_ts_ms = stamp
                if self._track_ids:
                    self.received.setdefault(_webhook_id(msg.headers(), msg.key()), now)
            self.last_progress = now
            if self.first_seen is None:
                self.first_seen = now
                self.first_sample = self._sampler.take() if self._sampler else None
            if self.target is not None and self.final_sample is None and self.count >= self.target:
                self.final_sample = self._sampler.take() if self._sampler else None

    def rate(self, inbound: int) -> float | None:
        """Inbound records per second over the span of the output's broker timestamps."""
        if self.first_ts_ms is None or self.last_ts_ms is None:
            return None
        span = (self.last_ts_ms - self.first_ts_ms) / 1000
        return inbound / span if span > 0 else None


def _partitions(consumer: Consumer, topic: str, timeout_s: float = 30) -> list[int]:
    """The topic's partitions, once the broker asked knows them all with a leader. On a
    3-broker cluster a topic just created can be unknown to one broker for a moment; assigning
    the empty list it then gives left a run watching nothing (at least 7 cluster runs in 17)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = found.partitions.values()
        if found.error is None and partitions and all(p.leader >= 0 for p in partitions):
            return sorted(found.partitions)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{topic}: no leader for every partition after {timeout_s:.0f}s")
        time.sleep(0.1)


def _webhook_id(headers: object, key: bytes | None) -> bytes:
    """The worker and the tuned loop name the webhook in a header; the ceiling keeps the key."""
    for name, value in headers if isinstance(headers, list) else []:
        if name == "wa-webhook-id" and isinstance(value, bytes):
            return value
    return key or b""
