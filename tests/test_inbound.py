"""The inbound source (`operators/inbound.py`): the drainable partition around Bytewax's Kafka
partition, partition listing, and what becomes of consumer errors.

The wrapper's own logic runs against a scripted inner partition; listing, resuming from a
snapshot and librdkafka's real error records use the broker.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING
from confluent_kafka import KafkaError as ConfluentError
from prometheus_client import REGISTRY

from devtools.devstack import create_topics
from devtools.kafka import produce
from harness.tcp_proxy import TcpProxy
from tests.conftest import Stack, Topics
from wa_worker.core.offsets import PositionBook
from wa_worker.core.shutdown import Drain
from wa_worker.models.records import ErrorClass, SourcePosition
from wa_worker.operators.inbound import (
    InboundItem,
    InboundSource,
    _DrainablePartition,
    consumer_error,
    inbound_source,
    is_message,
)
from wa_worker.settings import StartOffset, load_settings

TOPIC = "orders"
PART = (TOPIC, 4)


def message(
    offset: int | None, value: bytes | None = b"{}"
) -> KafkaSourceMessage[bytes | None, bytes | None]:
    return KafkaSourceMessage(key=b"k", value=value, topic=TOPIC, offset=offset, partition=4)


def error(
    code: int = ConfluentError._TRANSPORT,
    offset: int | None = None,
    value: bytes | None = None,
    fatal: bool = False,
) -> KafkaError[bytes | None, bytes | None]:
    return KafkaError(ConfluentError(code, "boom", fatal=fatal), message(offset, value))


class ScriptedPartition(StatefulSourcePartition[InboundItem, int | None]):
    """Hands out the batches it was given, then empty ones; snapshots what the test sets."""

    def __init__(self, batches: list[list[InboundItem]], state: int | None = None) -> None:
        self.batches = batches
        self.state = state
        self.asked = 0
        self.closed = False
        self.awake = datetime(2026, 1, 1, tzinfo=UTC)

    def next_batch(self) -> list[InboundItem]:
        self.asked += 1
        return self.batches.pop(0) if self.batches else []

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> int | None:
        return self.state

    def close(self) -> None:
        self.closed = True


def drainable(
    inner: ScriptedPartition, book: PositionBook, drain: Drain, held: list[bool] | None = None
) -> _DrainablePartition:
    """What `InboundSource.build_part` returns, around a scripted partition instead of Kafka's."""
    flag = held if held is not None else [False]
    return _DrainablePartition(inner, PART, book, drain, lambda: flag[0])


def test_a_batch_passes_through_and_its_next_offset_is_recorded_as_read() -> None:
    book = PositionBook()
    batch: list[InboundItem] = [message(7), message(8)]
    part = drainable(ScriptedPartition([batch]), book, Drain())
    assert part.next_batch() == batch
    assert book.views() == ({PART: 9}, {})


def test_a_batch_ending_in_an_error_records_the_errors_offset() -> None:
    book = PositionBook()
    part = drainable(ScriptedPartition([[message(3), error(offset=4)]]), book, Drain())
    assert len(part.next_batch()) == 2
    assert book.views()[0] == {PART: 5}


def test_empty_batches_and_offsetless_errors_leave_the_position_alone() -> None:
    book = PositionBook()
    book.read(PART, 42)
    part = drainable(ScriptedPartition([[], [error(offset=None)]]), book, Drain())
    assert part.next_batch() == []
    assert len(part.next_batch()) == 1
    assert book.views()[0] == {PART: 42}


def test_hold_takes_no_input_and_keeps_the_inner_batch_for_later() -> None:
    held = [True]
    inner = ScriptedPartition([[message(0)]])
    book = PositionBook()
    part = drainable(inner, book, Drain(), held)
    assert part.next_batch() == []
    assert part.next_batch() == []
    assert inner.asked == 0  # nothing read from Kafka while held
    assert book.views() == ({}, {})
    held[0] = False
    assert part.next_batch() == [message(0)]
    assert inner.asked == 1


def test_draining_ends_the_partition_even_while_held() -> None:
    drain = Drain()
    inner = ScriptedPartition([[message(0)]])
    part = drainable(inner, PositionBook(), drain, [True])
    drain.start("test")
    with pytest.raises(StopIteration):
        part.next_batch()
    assert inner.asked == 0  # the pending batch stays in Kafka, for the next start


def test_snapshot_returns_the_inner_state_and_books_real_offsets_only() -> None:
    book = PositionBook()
    inner = ScriptedPartition([], state=OFFSET_BEGINNING)  # never read: a sentinel, not a position
    part = drainable(inner, book, Drain())
    assert part.snapshot() == OFFSET_BEGINNING
    inner.state = None
    assert part.snapshot() is None
    assert book.views() == ({}, {})
    inner.state = 0
    assert part.snapshot() == 0
    inner.state = 12
    assert part.snapshot() == 12
    assert book.views() == ({}, {PART: 12})


def test_next_awake_and_close_reach_the_inner_partition() -> None:
    inner = ScriptedPartition([])
    part = drainable(inner, PositionBook(), Drain())
    assert part.next_awake() == inner.awake
    part.close()
    assert inner.closed


def test_is_message_tells_records_from_errors() -> None:
    assert is_message(message(1))
    assert not is_message(error())


# --- the real broker ---------------------------------------------------------------------


def _source(
    stack: Stack, topics: list[str], book: PositionBook, add_config: dict[str, str] | None = None
) -> InboundSource:
    return InboundSource(
        book=book,
        drain=Drain(),
        hold=lambda: False,
        admin_config={"bootstrap.servers": stack.brokers},
        brokers=[stack.brokers],
        topics=topics,
        raise_on_errors=False,
        add_config=add_config,
    )


def test_list_parts_names_every_partition_of_the_topic(stack: Stack, topics: Topics) -> None:
    parts = _source(stack, [topics.inbound], PositionBook()).list_parts()
    assert sorted(parts) == [f"{i}-{topics.inbound}" for i in range(3)]


def test_list_parts_fails_on_a_missing_topic_naming_it(stack: Stack, topics: Topics) -> None:
    missing = f"t{uuid.uuid4().hex[:10]}.missing"
    source = _source(stack, [topics.inbound, missing], PositionBook())
    with pytest.raises(RuntimeError, match=f"{missing!r} is missing"):
        source.list_parts()


def test_list_parts_gives_up_after_its_timeout_on_a_broker_that_never_answers() -> None:
    # A socket that accepts connections and never replies: Bytewax's own listing waits forever.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        source = InboundSource(
            book=PositionBook(),
            drain=Drain(),
            hold=lambda: False,
            admin_config={"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0},
            list_timeout_s=1.0,
            brokers=["unused"],
            topics=["any"],
        )
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"cannot list the partitions of any within 1s"):
            source.list_parts()
        assert time.monotonic() - started < 5


def test_list_parts_waits_for_a_broker_that_comes_up_after_the_flow_starts(
    stack: Stack, topics: Topics
) -> None:
    # The broker (behind a proxy on a port nothing listens on yet) is back two seconds later.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host, broker_port = stack.brokers.rsplit(":", 1)
    proxies: list[TcpProxy] = []
    later = threading.Timer(2.0, lambda: proxies.append(TcpProxy(host, int(broker_port), port)))
    later.start()
    source = InboundSource(
        book=PositionBook(),
        drain=Drain(),
        hold=lambda: False,
        admin_config={"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0},
        list_timeout_s=30.0,
        brokers=["unused"],
        topics=[topics.inbound],
    )
    try:
        parts = source.list_parts()
    finally:
        later.join()
        for proxy in proxies:
            proxy.close()
    assert sorted(parts) == [f"{i}-{topics.inbound}" for i in range(3)]


def _read(
    part: StatefulSourcePartition[InboundItem, int | None], count: int, timeout_s: float = 20
) -> list[InboundItem]:
    items: list[InboundItem] = []
    deadline = time.monotonic() + timeout_s
    while len(items) < count and time.monotonic() < deadline:
        items.extend(part.next_batch())
    return items


@pytest.fixture
def dashed_topic(stack: Stack) -> str:
    """One partition, a dash in the name (the part name is "<index>-<topic>")."""
    name = f"t{uuid.uuid4().hex[:10]}-in-bound"
    create_topics(stack.brokers, [name], partitions=1)
    return name


def test_a_built_partition_resumes_from_its_snapshot_and_books_its_positions(
    stack: Stack, dashed_topic: str
) -> None:
    produce(stack.brokers, dashed_topic, [(b"k", f"v{i}".encode()) for i in range(5)])
    book = PositionBook()
    source = _source(stack, [dashed_topic], book)
    part = source.build_part("inbound", f"0-{dashed_topic}", resume_state=3)
    try:
        items = _read(part, 2)
        assert [(i.offset, i.value) for i in items if is_message(i)] == [(3, b"v3"), (4, b"v4")]
        assert part.snapshot() == 5  # the next run resumes after what was read
        assert book.views() == ({(dashed_topic, 0): 5}, {(dashed_topic, 0): 5})
    finally:
        part.close()


@pytest.mark.parametrize(("start", "first"), [(StartOffset.EARLIEST, 0), (StartOffset.LATEST, 3)])
def test_kafka_start_offset_decides_where_a_partition_without_a_snapshot_starts(
    stack: Stack, dashed_topic: str, start: StartOffset, first: int
) -> None:
    produce(stack.brokers, dashed_topic, [(b"k", b"old")] * 3)
    settings = load_settings(
        kafka_brokers=stack.brokers, kafka_inbound_topic=dashed_topic, kafka_start_offset=start
    )
    book = PositionBook()
    source = inbound_source(settings, Drain(), lambda: False, book)
    [for_part] = source.list_parts()
    part = source.build_part("inbound", for_part, resume_state=None)
    try:
        # Earliest: the old records; latest: nothing, and the consumer settles at the end.
        items = _read(part, 4 - first, timeout_s=3)
        produce(stack.brokers, dashed_topic, [(b"k", b"new")])
        items += _read(part, 4 - first - len(items))
        assert [i.offset for i in items if is_message(i)] == list(range(first, 4))
    finally:
        part.close()


# --- consumer errors ---------------------------------------------------------------------


def _consumer_errors(code: str) -> float:
    return REGISTRY.get_sample_value("wa_consumer_errors_total", {"code": code}) or 0.0


def test_a_fatal_consumer_error_stops_the_worker() -> None:
    with pytest.raises(RuntimeError, match="fatal Kafka consumer error"):
        consumer_error(error(ConfluentError._FATAL, fatal=True))


def test_an_error_without_a_record_is_counted_and_goes_nowhere() -> None:
    before = _consumer_errors("_TRANSPORT")
    assert consumer_error(error(ConfluentError._TRANSPORT)) == []
    assert _consumer_errors("_TRANSPORT") == before + 1


def test_an_error_carrying_a_record_dead_letters_that_record() -> None:
    before = _consumer_errors("_BAD_MSG")
    [dead] = consumer_error(error(ConfluentError._BAD_MSG, offset=17, value=b"raw record"))
    assert dead.error_class is ErrorClass.CONSUMER_ERROR
    assert dead.reason.startswith("Kafka consumer error: ")
    assert dead.original == b"raw record"
    assert dead.source == SourcePosition(topic=TOPIC, partition=4, offset=17)
    assert _consumer_errors("_BAD_MSG") == before + 1


def test_a_real_consumer_error_without_a_record_is_not_dead_lettered(
    stack: Stack, dashed_topic: str
) -> None:
    produce(stack.brokers, dashed_topic, [(b"k", b"only")])
    # Resuming past the end with auto.offset.reset=error (a KAFKA_AUTO_OFFSET_RESET an operator
    # may set) makes librdkafka report an error on the partition: there is no record there.
    source = _source(
        stack, [dashed_topic], PositionBook(), add_config={"auto.offset.reset": "error"}
    )
    part = source.build_part("inbound", f"0-{dashed_topic}", resume_state=50)
    try:
        [item] = [i for i in _read(part, 1) if not is_message(i)][:1]
    finally:
        part.close()
    assert isinstance(item, KafkaError)
    assert item.err.name() == "_AUTO_OFFSET_RESET"
    assert consumer_error(item) == []


def test_a_built_partition_reads_the_same_messages_as_the_connectors_own(
    stack: Stack, dashed_topic: str
) -> None:
    """The lean message construction (operators/inbound.py) gives what Bytewax's partition
    gives, field for field, for records with and without headers or keys."""
    from bytewax.connectors.kafka import KafkaSource
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": stack.brokers})
    producer.produce(dashed_topic, b"v0", b"k0", headers=[("a", b"1"), ("b", b"")])
    producer.produce(dashed_topic, b"v1", None)
    producer.produce(dashed_topic, None, b"k2", timestamp=1_767_225_600_000)
    assert producer.flush(30) == 0
    source = _source(stack, [dashed_topic], PositionBook())
    ours = source.build_part("inbound", f"0-{dashed_topic}", resume_state=None)
    stock = KafkaSource([stack.brokers], [dashed_topic], raise_on_errors=False).build_part(
        "inbound", f"0-{dashed_topic}", None
    )
    try:
        got, want = _read(ours, 3), _read(stock, 3)
        assert len(got) == 3
        assert [type(m) for m in got] == [KafkaSourceMessage] * 3
        assert got == want
        assert [m.headers for m in got if is_message(m)] == [[("a", b"1"), ("b", b"")], [], []]
        assert ours.snapshot() == stock.snapshot() == 3
    finally:
        ours.close()
        stock.close()
