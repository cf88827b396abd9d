"""`python -m bench.sink_cost [--base REV] [--records N] [--batch B] [--work-us U]`: the Kafka
sink's partition, old against new, on a single broker and on the 3-broker SASL_SSL cluster
(acks=all, min.insync.replicas=2), in one run.

The old code is `sinks/kafka_sink.py` at REV (default `main`), loaded from git beside the
checkout's. Each writes the same processed records in batches of B, with U µs of CPU work per
record between batches (what the worker's other steps cost), then the end of the epoch (the
new sink's snapshot; the old one had flushed every batch). Prints records/s of each, and the
cluster's rate over the single broker's for each; the median of R interleaved rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import ModuleType
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.baseline import module_at
from bench.stack import Stack, start_cluster_stack, start_stack, stop_stack
from devtools.webhooks import text_event
from wa_worker.core.dedupe import DoneMark
from wa_worker.core.kafka_options import KafkaConfig
from wa_worker.models.records import Processed
from wa_worker.sinks import kafka_sink as new
from wa_worker.sinks.records import KafkaRecord, Topics, to_record

MAX_BYTES = 1_048_576


class _Marks:
    def mark_done(self, marks: list[DoneMark]) -> None:
        pass


def old_module(rev: str) -> ModuleType:
    return module_at(rev, "sinks/kafka_sink.py", "bench_old_kafka_sink")


def _records(topic: str, count: int) -> list[KafkaRecord]:
    topics = Topics(topic, topic + ".dlq", topic + ".in")
    return [
        to_record(
            Processed(event=text_event(f"wamid.{i}", wa_id=f"3161{i % 200:07d}"), attempts=1),
            topics,
            MAX_BYTES,
        )
        for i in range(count)
    ]


def _work(us: float) -> None:
    until = time.perf_counter() + us / 1e6
    while time.perf_counter() < until:
        pass


def _run(partition: Any, records: list[KafkaRecord], batch: int, work_us: float) -> float:
    """records/s through `partition`."""
    started = time.perf_counter()
    for i in range(0, len(records), batch):
        chunk = records[i : i + batch]
        _work(work_us * len(chunk))
        partition.write_batch(chunk)
    if hasattr(partition, "snapshot"):
        partition.snapshot()
    partition.close()
    return len(records) / (time.perf_counter() - started)


def _topic(stack: Stack, name: str) -> None:
    admin = AdminClient(stack.kafka())
    futures = admin.create_topics([NewTopic(name, 3, stack.replicas)])
    for future in futures.values():
        future.result(30)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink_cost")
    parser.add_argument("--base", default="main", help="git revision of the old code")
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--work-us", type=float, default=250.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    old = old_module(args.base)
    stack = start_stack()
    try:
        stacks = {"1 broker": stack, "3 brokers": start_cluster_stack(stack.redis_url)}
        rates: dict[tuple[str, str], list[float]] = {}
        for name, where in stacks.items():
            topic = f"sinkcost.{time.time_ns()}"
            _topic(where, topic)
            records = _records(topic, args.records)
            config = KafkaConfig(where.brokers, MAX_BYTES, 60.0, {}).producer()
            config.update(where.client)
            for _ in range(args.rounds):
                for label, module in (("old", old), ("new", new)):
                    part = module._KafkaOutcomePartition(Producer(config), _Marks(), 60.0)
                    rate = _run(part, records, args.batch, args.work_us)
                    rates.setdefault((name, label), []).append(rate)
        median = {k: statistics.median(v) for k, v in rates.items()}
        for name in stacks:
            o, n = median[(name, "old")], median[(name, "new")]
            print(f"{name:>9}: old {o:,.0f} records/s, new {n:,.0f} records/s, new/old {n / o:.2f}")
        for label in ("old", "new"):
            ratio = median[("3 brokers", label)] / median[("1 broker", label)]
            print(f"{label}: 3 brokers / 1 broker {ratio:.2f}x")
    finally:
        stop_stack()


if __name__ == "__main__":
    main()
