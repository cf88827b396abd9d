"""The Kafka sink's partition on the real broker: batches are produced without waiting for
their acknowledgements, events are marked done only once Kafka has their records, and the
epoch's snapshot returns only when every record written in the epoch is on the topic."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import Producer

from devtools.kafka import read_topic
from devtools.webhooks import text_event
from tests.conftest import Stack, Topics
from wa_worker.core.dedupe import DoneMark
from wa_worker.core.kafka_options import KafkaConfig
from wa_worker.models.records import Processed
from wa_worker.sinks.kafka_sink import _KafkaOutcomePartition
from wa_worker.sinks.records import KafkaRecord, to_record
from wa_worker.sinks.records import Topics as RecordTopics

MAX = 1_048_576


@dataclass
class Marks:
    marked: list[DoneMark] = field(default_factory=list)

    def mark_done(self, marks: list[DoneMark]) -> None:
        self.marked.extend(marks)


def _records(topics: Topics, first: int, count: int) -> list[KafkaRecord]:
    out = RecordTopics(topics.processed, topics.dlq, topics.inbound)
    return [
        to_record(Processed(event=text_event(f"wamid.{i}"), attempts=1), out, MAX)
        for i in range(first, first + count)
    ]


def test_batches_go_out_without_waiting_and_the_snapshot_waits_for_all(
    stack: Stack, topics: Topics
) -> None:
    config = KafkaConfig(stack.brokers, MAX, 30.0, {}).producer()
    marks = Marks()
    sink = _KafkaOutcomePartition(Producer(config), marks, 30.0)
    sink.write_batch(_records(topics, 0, 200))
    # Before: each batch was flushed, and marked done, before write_batch returned.
    assert marks.marked == []
    for first in range(200, 1000, 200):
        sink.write_batch(_records(topics, first, 200))
    sink.snapshot()
    assert sorted(marks.marked) == sorted((f"wamid.{i}", "processed") for i in range(1000))
    written = read_topic(stack.brokers, topics.processed, settle_s=0.2)
    keys = [r.header("wa-event-key") for r in written]
    # One conversation, so one partition: the records are there, and in order.
    assert keys == [f"wamid.{i}" for i in range(1000)]
    sink.close()
