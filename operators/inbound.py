"""The inbound Kafka source: Bytewax's KafkaSource, made drainable and observable.

On top of the connector: listing partitions has a timeout (the connector's waits forever for
an unreachable broker); during a drain, partitions stop reading (they end, and resume from the
snapshot on the next start); and positions are recorded for the lag gauge and group commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeGuard

from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka.admin import AdminClient

from wa_worker.offsets import PositionBook
from wa_worker.shutdown import Drain

InboundItem = (
    KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None]
)


class _DrainablePartition(StatefulSourcePartition[InboundItem, int | None]):
    def __init__(
        self,
        inner: StatefulSourcePartition[InboundItem, int | None],
        partition: tuple[str, int],
        book: PositionBook,
        drain: Drain,
    ) -> None:
        self._inner = inner
        self._partition = partition
        self._book = book
        self._drain = drain

    def next_batch(self) -> list[InboundItem]:
        if self._drain.draining:
            raise StopIteration
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
        admin_config: dict[str, Any],
        list_timeout_s: float = 15.0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._book = book
        self._drain = drain
        self._admin_config = admin_config
        self._list_timeout_s = list_timeout_s

    def list_parts(self) -> list[str]:
        metadata = AdminClient(self._admin_config).list_topics(timeout=self._list_timeout_s)
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
        return _DrainablePartition(inner, (topic, int(index)), self._book, self._drain)


def is_message(item: InboundItem) -> TypeGuard[KafkaSourceMessage[bytes | None, bytes | None]]:
    return isinstance(item, KafkaSourceMessage)
