"""The Kafka sink's partition: what it does with each delivery report. A fake producer stands
in for librdkafka, which is what decides these reports; the broker itself adds nothing here
(tests/test_unwritable.py writes through a real broker that refuses records)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from devtools.webhooks import text_event
from wa_worker.core.dedupe import DoneMark
from wa_worker.errors import DeliveryError
from wa_worker.models.headers import DeadLetterHeaders
from wa_worker.models.records import (
    DeadLetter,
    ErrorClass,
    Processed,
    SourcePosition,
    WebhookEvent,
)
from wa_worker.process.startup import bytewax_process_count
from wa_worker.sinks.kafka_sink import KafkaOutcomeSink, _KafkaOutcomePartition
from wa_worker.sinks.records import KafkaRecord, Topics, to_record

TOPICS = Topics("processed", "dlq", "inbound")
MAX = 1_048_576


@dataclass
class _Msg:
    _topic: str

    def topic(self) -> str:
        return self._topic


@dataclass
class FakeProducer:
    """Queues records; `flush` reports each one, with the error `verdict` gives (None: ok)."""

    verdict: Callable[[str, bytes], int | None] = lambda topic, value: None
    refuse_early: Callable[[str, bytes], int | None] = lambda topic, value: None
    buffer_full: int = 0  # BufferErrors before the next record is accepted
    unacknowledged: int = 0  # what flush still reports pending after its reports
    queued: list[tuple[str, bytes, list[tuple[str, bytes]], Any]] = field(default_factory=list)
    acknowledged: list[tuple[str, bytes]] = field(default_factory=list)
    acknowledged_headers: list[list[tuple[str, bytes]]] = field(default_factory=list)
    polls: int = 0
    flushes: int = 0

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        on_delivery: Callable[[KafkaError | None, _Msg], None],
    ) -> None:
        if self.buffer_full:
            self.buffer_full -= 1
            raise BufferError("Local: Queue full")
        code = self.refuse_early(topic, value)
        if code is not None:
            raise KafkaException(KafkaError(code))
        self.queued.append((topic, value, headers, on_delivery))

    def poll(self, timeout: float) -> int:
        self.polls += timeout > 0  # waits (for a full queue), not the sink's look at reports
        return 0

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        queued, self.queued = self.queued, []
        for topic, value, headers, on_delivery in queued:
            code = self.verdict(topic, value)
            if code is None:
                self.acknowledged.append((topic, value))
                self.acknowledged_headers.append(headers)
            on_delivery(None if code is None else KafkaError(code), _Msg(topic))
        return self.unacknowledged


@dataclass
class Marks:
    """Done marks, checked to come after Kafka acknowledged their records."""

    producer: FakeProducer
    marked: list[DoneMark] = field(default_factory=list)
    acknowledged_then: int = -1

    def mark_done(self, marks: list[DoneMark]) -> None:
        acknowledged = {
            (dict(headers)["wa-event-key"].decode(), topic)
            for (topic, _), headers in zip(
                self.producer.acknowledged, self.producer.acknowledged_headers, strict=True
            )
        }
        # The outcome names its topic in these tests: "processed" or "dlq".
        unacknowledged = [m for m in marks if m not in acknowledged]
        assert not unacknowledged, f"marked done before Kafka acknowledged {unacknowledged}"
        self.acknowledged_then = len(self.producer.acknowledged)
        self.marked.extend(marks)


def _event(key: str) -> WebhookEvent:
    return text_event(
        key,
        body="hi",
        webhook_id=f"w-{key}",
        source=SourcePosition(topic="inbound", partition=0, offset=3),
        envelope_raw=b'{"id":"w"}',
    )


def processed(key: str, result: Any = "ok") -> KafkaRecord:
    return to_record(Processed(event=_event(key), result=result, attempts=1), TOPICS, MAX)


def dead(key: str) -> KafkaRecord:
    letter = DeadLetter(
        error_class=ErrorClass.HANDLER_PERMANENT,
        reason="HTTP 422",
        event_key=key,
        webhook_id=f"w-{key}",
        attempts=1,
        event=_event(key),
    )
    return to_record(letter, TOPICS, MAX)


def _sink(producer: FakeProducer) -> tuple[_KafkaOutcomePartition, Marks]:
    marks = Marks(producer)
    return _KafkaOutcomePartition(cast(Producer, producer), marks, 0.05), marks


def _write(sink: _KafkaOutcomePartition, items: list[KafkaRecord]) -> None:
    """A batch, then the end of its epoch (when the sink must have every acknowledgement)."""
    sink.write_batch(items)
    sink.snapshot()


def test_a_batch_kafka_acknowledges_is_marked_done_after_delivery() -> None:
    producer = FakeProducer(buffer_full=2)
    sink, marks = _sink(producer)
    _write(sink, [processed("wamid.1"), dead("wamid.2")])
    assert [t for t, _ in producer.acknowledged] == ["processed", "dlq"]
    assert marks.marked == [("wamid.1", "processed"), ("wamid.2", "dlq")]
    assert marks.acknowledged_then == 2 and producer.polls == 2  # waited out the full queue


def _refuse_processed(topic: str, value: bytes) -> int | None:
    return KafkaError.MSG_SIZE_TOO_LARGE if topic == "processed" and b"big" in value else None


def test_a_processed_record_kafka_refuses_becomes_its_events_dead_letter() -> None:
    producer = FakeProducer(verdict=_refuse_processed)
    sink, marks = _sink(producer)
    _write(sink, [processed("wamid.big", "big"), processed("wamid.ok")])
    assert [t for t, _ in producer.acknowledged] == ["processed", "dlq"]
    assert marks.marked == [("wamid.ok", "processed"), ("wamid.big", "dlq")]


@pytest.mark.parametrize("early", [False, True], ids=["at-delivery", "before-queueing"])
def test_a_dead_letter_kafka_refuses_is_written_without_its_envelope(early: bool) -> None:
    def refuse(topic: str, value: bytes) -> int | None:
        return KafkaError.MSG_SIZE_TOO_LARGE if topic == "dlq" and value else None

    producer = FakeProducer(refuse_early=refuse) if early else FakeProducer(verdict=refuse)
    sink, marks = _sink(producer)
    _write(sink, [dead("wamid.1")])
    assert producer.acknowledged == [("dlq", b"")]
    context = DeadLetterHeaders.from_headers(producer.acknowledged_headers[0])
    assert (context.event_key, context.error_class) == ("wamid.1", "handler_permanent")
    dropped = context.envelope_dropped or ""
    assert dropped.startswith("Kafka refused the dead letter: ")
    assert marks.marked == [("wamid.1", "dlq")]


def test_a_record_refused_even_without_its_value_stops_the_batch_unmarked() -> None:
    producer = FakeProducer(verdict=lambda topic, value: KafkaError.MSG_SIZE_TOO_LARGE)
    sink, marks = _sink(producer)
    with pytest.raises(DeliveryError, match="even without its value"):
        _write(sink, [dead("wamid.1"), processed("wamid.2")])
    assert marks.marked == []


@pytest.mark.parametrize(
    "code",
    [KafkaError._MSG_TIMED_OUT, KafkaError.TOPIC_AUTHORIZATION_FAILED],
    ids=["timed-out", "not-authorised"],
)
def test_any_other_delivery_error_raises_and_marks_nothing(code: int) -> None:
    producer = FakeProducer(verdict=lambda topic, value: code if topic == "dlq" else None)
    sink, marks = _sink(producer)
    with pytest.raises(DeliveryError, match="did not acknowledge 1 of 2 records"):
        _write(sink, [processed("wamid.1"), dead("wamid.2")])
    assert marks.marked == []


def test_any_other_error_before_queueing_raises_and_marks_nothing() -> None:
    producer = FakeProducer(refuse_early=lambda topic, value: KafkaError._UNKNOWN_TOPIC)
    sink, marks = _sink(producer)
    with pytest.raises(DeliveryError, match="Kafka refused a processed record"):
        _write(sink, [processed("wamid.1")])
    assert marks.marked == []


def test_records_unacknowledged_at_the_deadline_raise_and_mark_nothing() -> None:
    producer = FakeProducer(unacknowledged=1)
    sink, marks = _sink(producer)
    with pytest.raises(DeliveryError, match="did not acknowledge 1 of 1 records"):
        _write(sink, [processed("wamid.1")])
    assert marks.marked == []


def test_a_batch_does_not_wait_for_kafka_the_epochs_snapshot_does() -> None:
    """Waiting for each batch's acknowledgements before the next (a flush per batch) halved
    the worker's rate on a 3-broker cluster: the wait is the epoch's, at its snapshot."""
    producer = FakeProducer()
    sink, marks = _sink(producer)
    sink.write_batch([processed("wamid.1")])
    sink.write_batch([dead("wamid.2")])
    assert (producer.flushes, len(producer.queued), marks.marked) == (0, 2, [])
    sink.snapshot()
    assert producer.flushes == 1 and not producer.queued
    assert marks.marked == [("wamid.1", "processed"), ("wamid.2", "dlq")]


def test_a_failure_reported_after_its_batch_stops_the_next_batch() -> None:
    producer = FakeProducer(verdict=lambda topic, value: KafkaError._MSG_TIMED_OUT)
    sink, marks = _sink(producer)
    sink.write_batch([processed("wamid.1")])
    producer.flush(0)  # librdkafka reports it in the background; the next poll hands it over
    with pytest.raises(DeliveryError, match="did not acknowledge 1 of 2 records"):
        sink.write_batch([processed("wamid.2")])
    assert marks.marked == []


def test_each_process_routes_its_records_to_its_own_partition() -> None:
    """Process 0 also lists the names no process of this run has: a run resumed on fewer
    processes loads the snapshots of the others' partitions (Bytewax panics on a load no
    worker lists)."""
    sinks = [KafkaOutcomeSink({}, lambda: Marks(FakeProducer()), 1.0, i, 2) for i in range(2)]
    first, second = (s.list_parts() for s in sinks)
    assert second == ["00001"]
    assert first[0] == "00000" and "00001" not in first and "00002" in first
    every = sorted(first + second)
    assert [every[s.part_fn("") % len(every)] for s in sinks] == ["00000", "00001"]


def test_the_process_count_is_read_the_way_bytewax_run_reads_addresses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("BYTEWAX_ADDRESSES", "BYTEWAX_HOSTFILE_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert bytewax_process_count(["dataflow", "-w", "2"]) == 1
    assert bytewax_process_count(["dataflow", "-i", "1", "-a", "h:1;h:2;h:3"]) == 3
    hosts = tmp_path / "hosts"
    hosts.write_text("h:1\nh:2\n\n")
    monkeypatch.setenv("BYTEWAX_HOSTFILE_PATH", str(hosts))
    assert bytewax_process_count(["dataflow", "-i", "0"]) == 2
