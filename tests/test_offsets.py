"""Offsets (`wa_worker/core/offsets.py`): the position book the source partitions write, and the
reporter that commits snapshotted positions to the consumer group and sets the lag gauge, on
the real broker."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import REGISTRY

from devtools.kafka import produce, read_topic
from tests.conftest import Stack, Topics
from wa_worker.core.offsets import OffsetReporter, PositionBook


@pytest.fixture
def topic_partitions() -> int:
    return 2


def test_the_book_keeps_read_and_snapshotted_positions_apart_latest_wins() -> None:
    book = PositionBook()
    book.read(("a", 0), 5)
    book.read(("a", 0), 9)
    book.read(("a", 1), 2)
    book.snapshotted(("a", 0), 4)
    assert book.views() == ({("a", 0): 9, ("a", 1): 2}, {("a", 0): 4})


def test_the_books_views_are_copies() -> None:
    book = PositionBook()
    book.read(("a", 0), 1)
    read, snapshotted = book.views()
    read[("a", 0)] = 99
    snapshotted[("b", 0)] = 7
    assert book.views() == ({("a", 0): 1}, {})


def _group() -> str:
    return f"t{uuid.uuid4().hex[:10]}.group"


def _consumer(stack: Stack, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": stack.brokers, "group.id": group, "log_level": 0})


def _committed(stack: Stack, group: str, topic: str, partitions: int) -> list[int]:
    consumer = _consumer(stack, group)
    try:
        wanted = [TopicPartition(topic, p) for p in range(partitions)]
        return [tp.offset for tp in consumer.committed(wanted, timeout=10)]
    finally:
        consumer.close()


def _lag(topic: str, partition: int) -> float | None:
    labels = {"topic": topic, "partition": str(partition)}
    return REGISTRY.get_sample_value("wa_consumer_lag_messages", labels)


def _reporter(
    stack: Stack, book: PositionBook, group: str, interval_s: float = 60
) -> OffsetReporter:
    return OffsetReporter(book, {"bootstrap.servers": stack.brokers}, group, interval_s)


def _report_once(stack: Stack, book: PositionBook, group: str) -> None:
    consumer = _consumer(stack, group)
    try:
        _reporter(stack, book, group).report(consumer)
    finally:
        consumer.close()


def test_report_commits_snapshotted_positions_to_the_group(stack: Stack, topics: Topics) -> None:
    group, book = _group(), PositionBook()
    book.snapshotted((topics.inbound, 0), 3)
    book.snapshotted((topics.inbound, 1), 1)
    book.read((topics.inbound, 0), 5)  # read further than snapshotted: not what is committed
    _report_once(stack, book, group)
    assert _committed(stack, group, topics.inbound, 2) == [3, 1]


def test_a_partition_without_a_watermark_does_not_blank_the_others(
    stack: Stack, topics: Topics
) -> None:
    """A partition between leaders (here one that does not exist) answers no watermark: the
    other partitions are still measured and the commits still made."""
    produce(stack.brokers, topics.inbound, [(f"k{i}".encode(), b"v") for i in range(12)])
    high = Counter(r.partition for r in read_topic(stack.brokers, topics.inbound))
    group, book = _group(), PositionBook()
    book.read((topics.inbound, 7), 1)  # no such partition: get_watermark_offsets raises
    book.read((topics.inbound, 0), 1)
    book.snapshotted((topics.inbound, 0), 1)
    _report_once(stack, book, group)
    assert _lag(topics.inbound, 0) == high[0] - 1
    assert _lag(topics.inbound, 7) is None
    assert _committed(stack, group, topics.inbound, 1) == [1]


def test_report_commits_only_positions_that_changed(stack: Stack, topics: Topics) -> None:
    group, book = _group(), PositionBook()
    reporter = _reporter(stack, book, group)
    consumer = _consumer(stack, group)
    try:
        book.snapshotted((topics.inbound, 0), 2)
        reporter.report(consumer)
        # Someone else moves the group's offset; an unchanged book does not commit again...
        other = _consumer(stack, group)
        other.commit(offsets=[TopicPartition(topics.inbound, 0, 7)], asynchronous=False)
        other.close()
        reporter.report(consumer)
        assert _committed(stack, group, topics.inbound, 1) == [7]
        # ...a new snapshot does.
        book.snapshotted((topics.inbound, 0), 4)
        reporter.report(consumer)
        assert _committed(stack, group, topics.inbound, 1) == [4]
    finally:
        consumer.close()


def test_report_sets_the_lag_gauge_from_high_watermarks(stack: Stack, topics: Topics) -> None:
    produce(stack.brokers, topics.inbound, [(f"k{i}".encode(), b"v") for i in range(12)])
    high = Counter(r.partition for r in read_topic(stack.brokers, topics.inbound))
    assert set(high) == {0, 1}, high  # the keys spread over both partitions
    group, book = _group(), PositionBook()
    book.read((topics.inbound, 0), 1)
    book.read((topics.inbound, 1), high[1] + 5)  # past the end (a stale watermark): never < 0
    _report_once(stack, book, group)
    assert _lag(topics.inbound, 0) == high[0] - 1
    assert _lag(topics.inbound, 1) == 0
    assert _committed(stack, group, topics.inbound, 2) == [-1001, -1001]  # nothing snapshotted


def test_the_reporter_thread_reports_the_last_snapshot_when_stopped(
    stack: Stack, topics: Topics
) -> None:
    produce(stack.brokers, topics.inbound, [(b"same-key", b"v") for _ in range(4)])
    [partition] = {r.partition for r in read_topic(stack.brokers, topics.inbound)}
    group, book = _group(), PositionBook()
    reporter = _reporter(stack, book, group, interval_s=60).start()
    time.sleep(0.2)
    book.snapshotted((topics.inbound, partition), 4)  # a drained run's final snapshot
    reporter.stop()  # long before the next interval: stopping reports once more
    assert _committed(stack, group, topics.inbound, 2)[partition] == 4
