"""The inbound Kafka source: Bytewax's KafkaSource, made drainable and observable.

On top of the connector: listing partitions has a timeout (the connector's waits forever for
an unreachable broker); during a drain, partitions stop reading (they end, and resume from the
snapshot on the next start); and positions are recorded for the lag gauge and group commits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeGuard

from bytewax.connectors.kafka import (
    KafkaError,
    KafkaSource,
    KafkaSourceMessage,
    _KafkaSourcePartition,
)
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Message
from confluent_kafka import KafkaError as ConfluentKafkaError

from wa_worker.core import kafka_connect, metrics
from wa_worker.core.offsets import PositionBook
from wa_worker.core.shutdown import Drain
from wa_worker.models.records import DeadLetter, ErrorClass, SourcePosition
from wa_worker.settings import Settings, StartOffset

log = logging.getLogger(__name__)

# What the inbound source yields (a replay's file source too): a record, or the consumer's
# error, with the raw bytes of key and value. Written once here; the flow's steps import them.
InboundMessage = KafkaSourceMessage[bytes | None, bytes | None]
InboundError = KafkaError[bytes | None, bytes | None]
InboundItem = InboundMessage | InboundError


_NEW = object.__new__


def lean_message(msg: Message) -> InboundMessage:
    """`KafkaSourceMessage(...)` of a consumed record without the frozen dataclass's
    `__init__` (one `object.__setattr__` per field: 3.2 -> 0.6 us, for every record). The
    same fields, from the same accessors, in the same order."""
    message: InboundMessage = _NEW(KafkaSourceMessage)
    message.__dict__.update(
        key=msg.key(),
        value=msg.value(),
        topic=msg.topic(),
        headers=msg.headers() or [],
        latency=msg.latency(),
        offset=msg.offset(),
        partition=msg.partition(),
        timestamp=msg.timestamp(),
    )
    return message


class _LeanKafkaPartition(_KafkaSourcePartition):
    """The connector's partition (bytewax 0.21.1, pinned: its consumer, offsets, metrics and
    errors as they are), reading a batch with `lean_message`. Its `next_batch`, but for that."""

    def next_batch(self) -> list[InboundItem]:
        if self._eof:
            raise StopIteration()
        msgs = self._consumer.consume(self._batch_size, 0.001)
        batch: list[InboundItem] = []
        last_offset = None
        for msg in msgs:
            error = msg.error()
            if error is not None:
                if error.code() == ConfluentKafkaError._PARTITION_EOF:
                    self._eof = True  # StopIteration on the next call: this batch goes out
                    break
                if self._raise_on_errors:
                    raise RuntimeError(
                        f"error consuming from Kafka topic `{self._topic!r}`: {error}"
                    )
                batch.append(KafkaError(error, lean_message(msg)))
            else:
                batch.append(lean_message(msg))
            last_offset = msg.offset()
        if last_offset is not None:  # resume from the next record, not this one
            self._offset = last_offset + 1
        return batch


class _DrainablePartition(StatefulSourcePartition[InboundItem, int | None]):
    def __init__(
        self,
        inner: StatefulSourcePartition[InboundItem, int | None],
        partition: tuple[str, int],
        book: PositionBook,
        drain: Drain,
        hold: Callable[[], bool],
    ) -> None:
        self._inner = inner
        self._partition = partition
        self._book = book
        self._drain = drain
        self._hold = hold

    def next_batch(self) -> list[InboundItem]:
        if self._drain.draining:
            raise StopIteration
        if self._hold():
            return []  # e.g. the handler's breaker is open: take no new input meanwhile
        batch = list(self._inner.next_batch())
        if batch:
            last = batch[-1]
            offset = last.offset if isinstance(last, KafkaSourceMessage) else last.msg.offset
            if offset is not None:
                self._book.read(self._partition, offset + 1)
        return batch

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> int | None:
        offset = self._inner.snapshot()
        if offset is not None and offset >= 0:
            self._book.snapshotted(self._partition, offset)
        return offset

    def close(self) -> None:
        self._inner.close()


class InboundSource(KafkaSource):
    def __init__(
        self,
        *,
        book: PositionBook,
        drain: Drain,
        hold: Callable[[], bool],
        admin_config: dict[str, Any],
        list_timeout_s: float = 15.0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._book = book
        self._drain = drain
        self._hold = hold
        self._admin_config = admin_config
        self._list_timeout_s = list_timeout_s

    def list_parts(self) -> list[str]:
        # Bytewax lists once, as the flow starts: a broker restarting then is waited for.
        try:
            metadata = kafka_connect.connect(self._admin_config, {}, self._list_timeout_s)
        except Exception as exc:
            raise RuntimeError(
                f"Kafka: cannot list the partitions of {', '.join(self._topics)} within "
                f"{self._list_timeout_s:g}s (KAFKA_STARTUP_WAIT_S): {exc}"
            ) from exc
        parts: list[str] = []
        for topic in self._topics:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                raise RuntimeError(f"Kafka topic {topic!r} is missing or unreadable")
            parts.extend(f"{index}-{topic}" for index in found.partitions)
        return parts

    # Returns the connector's partition wrapped, not the private type the stub names.
    def build_part(  # type: ignore[override]
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _DrainablePartition:
        index, topic = for_part.split("-", 1)
        inner = super().build_part(step_id, for_part, resume_state)
        if type(inner) is _KafkaSourcePartition:  # as built, with nothing of its own added
            inner.__class__ = _LeanKafkaPartition
        return _DrainablePartition(inner, (topic, int(index)), self._book, self._drain, self._hold)


def is_message(item: InboundItem) -> TypeGuard[InboundMessage]:
    return isinstance(item, KafkaSourceMessage)


def inbound_source(
    settings: Settings, drain: Drain, hold: Callable[[], bool], book: PositionBook
) -> InboundSource:
    earliest = settings.kafka_start_offset is StartOffset.EARLIEST
    return InboundSource(
        book=book,
        drain=drain,
        hold=hold,
        admin_config=settings.admin_config(),
        brokers=settings.broker_list,
        topics=[settings.kafka_inbound_topic],
        starting_offset=OFFSET_BEGINNING if earliest else OFFSET_END,
        add_config=settings.consumer_config(),
        batch_size=settings.kafka_batch_size,
        raise_on_errors=False,
        list_timeout_s=settings.kafka_startup_wait_s,
    )


# Errors about one record at its offset (it is corrupt or too large to fetch): that record is
# what the DLQ gets. For any other error librdkafka puts its error text in the value, which is
# no record, and the position may hold none (an offset out of range).
RECORD_ERRORS = frozenset(
    {
        ConfluentKafkaError._BAD_MSG,
        ConfluentKafkaError.INVALID_MSG,
        ConfluentKafkaError.MSG_SIZE_TOO_LARGE,
    }
)


def consumer_error(error: InboundError) -> list[DeadLetter]:
    """Consumer errors are mostly about the connection (broker down, rebalancing metadata):
    librdkafka retries those itself, so they are logged and counted. One about a record sends
    that record to the DLQ; a fatal one stops the worker."""
    if error.err.fatal():
        raise RuntimeError(f"fatal Kafka consumer error: {error.err}")
    metrics.CONSUMER_ERRORS.labels(error.err.name()).inc()
    msg = error.msg
    if error.err.code() not in RECORD_ERRORS or not msg.value:
        log.warning("Kafka consumer error (retried by the client): %s", error.err)
        return []
    return [
        DeadLetter(
            error_class=ErrorClass.CONSUMER_ERROR,
            reason=f"Kafka consumer error: {error.err}"[:500],
            source=SourcePosition(
                topic=msg.topic or "", partition=msg.partition or 0, offset=msg.offset or 0
            ),
            original=msg.value,
        )
    ]
