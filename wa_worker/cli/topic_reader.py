"""Read a bounded part of a topic without joining a group: per partition the offsets
[start, end), where end is at most the high watermark seen when the read was planned, so a read
never waits for records that are still arriving."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, Message, TopicPartition

from wa_worker.core.timespec import to_ms
from wa_worker.errors import CommandError, ConfigError
from wa_worker.models.headers import normalise
from wa_worker.settings import Settings

# Offsets per partition; the key None applies to every partition without its own entry.
OffsetSpec = Mapping[int | None, int]


@dataclass(frozen=True, slots=True)
class TopicRecord:
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None  # None: a tombstone
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None


@dataclass(frozen=True, slots=True)
class OffsetRange:
    start: int
    end: int  # exclusive

    @property
    def size(self) -> int:
        return max(self.end - self.start, 0)


@dataclass(frozen=True)
class ReadRequest:
    partitions: frozenset[int] | None = None
    since: datetime | None = None
    until: datetime | None = None
    from_offsets: OffsetSpec | None = None
    to_offsets: OffsetSpec | None = None  # exclusive

    def __post_init__(self) -> None:
        check_offset_bounds(self.from_offsets, self.to_offsets, self.partitions)


def check_offset_bounds(
    starts: OffsetSpec | None, ends: OffsetSpec | None, partitions: frozenset[int] | None = None
) -> None:
    """Refuse bounds that leave a partition nothing to read: a capture of 0 records that looks
    like success hides a typo in the command."""
    if not starts or not ends:
        return
    for partition in {*starts, *ends}:
        if partition is not None and partitions is not None and partition not in partitions:
            continue
        start, end = _spec(starts, partition), _spec(ends, partition)
        if start is not None and end is not None and start >= end:
            where = "every partition" if partition is None else f"partition {partition}"
            raise CommandError(
                f"--from-offset {start} is not before --to-offset {end} (exclusive) for "
                f"{where}: the range is empty"
            )


def parse_offset_specs(values: list[str]) -> dict[int | None, int]:
    """`N` (every partition) or `P:N` (partition P), as given to --from-offset/--to-offset."""
    specs: dict[int | None, int] = {}
    for value in values:
        partition, sep, offset = value.rpartition(":")
        try:
            number = int(offset)
            specs[int(partition) if sep else None] = number
        except ValueError:
            raise CommandError(f"{value!r} is not an offset: use N or PARTITION:N") from None
        if number < 0:
            raise CommandError(f"{value!r}: offsets are not negative")
    return specs


def clamp(
    low: int, high: int, starts: tuple[int | None, ...], ends: tuple[int | None, ...]
) -> OffsetRange:
    """The narrowest range inside the watermarks [low, high) that every bound allows."""
    start = max([low, *(s for s in starts if s is not None)])
    end = min([high, *(e for e in ends if e is not None)])
    return OffsetRange(start, max(start, end))


def _spec(spec: OffsetSpec | None, partition: int | None) -> int | None:
    if spec is None:
        return None
    return spec.get(partition, spec.get(None))


@contextmanager
def consumer(settings: Settings) -> Iterator[Consumer]:
    """A consumer that commits nothing and reports the end of each partition."""
    client = Consumer(
        {
            **settings.consumer_config(),
            "bootstrap.servers": settings.kafka_brokers,
            "group.id": f"wa-worker-tool-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        yield client
    finally:
        client.close()


def plan(
    client: Consumer, topic: str, request: ReadRequest, timeout_s: float = 10
) -> dict[int, OffsetRange]:
    """The range to read of each partition (time bounds via offsets_for_times)."""
    meta = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise ConfigError(f"topic {topic!r} does not exist on the cluster")
    partitions = sorted(meta.partitions)
    if request.partitions is not None:
        unknown = request.partitions - set(partitions)
        if unknown:
            raise CommandError(f"{topic} has partitions {partitions}, not {sorted(unknown)}")
        partitions = sorted(request.partitions)
    since = _times(client, topic, partitions, request.since, timeout_s)
    until = _times(client, topic, partitions, request.until, timeout_s)
    ranges: dict[int, OffsetRange] = {}
    for p in partitions:
        low, high = client.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        # No record at or after --since: nothing of this partition is that recent, so the range
        # starts at the high watermark (empty). For --until the same answer means no bound.
        start = high if request.since is not None and since.get(p) is None else since.get(p)
        ranges[p] = clamp(
            low,
            high,
            (_spec(request.from_offsets, p), start),
            (_spec(request.to_offsets, p), until.get(p)),
        )
    return ranges


def _times(
    client: Consumer, topic: str, partitions: list[int], when: datetime | None, timeout_s: float
) -> dict[int, int | None]:
    """First offset at or after `when` per partition; None when no record is that late."""
    if when is None:
        return {}
    found = client.offsets_for_times(
        [TopicPartition(topic, p, to_ms(when)) for p in partitions], timeout=timeout_s
    )
    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}


def read(
    client: Consumer, topic: str, ranges: Mapping[int, OffsetRange], idle_timeout_s: float = 15
) -> Iterator[TopicRecord]:
    """Records of each range in offset order per partition. Stops at each range's end, at the
    end of a partition, or after `idle_timeout_s` without a record (a lost broker)."""
    open_ranges = {p: r for p, r in ranges.items() if r.size}
    if not open_ranges:
        return
    client.assign([TopicPartition(topic, p, r.start) for p, r in open_ranges.items()])
    last_seen = time.monotonic()
    while open_ranges:
        msg = client.poll(0.5)
        if msg is None:
            if time.monotonic() - last_seen > idle_timeout_s:
                raise TimeoutError(
                    f"no record from {topic} for {idle_timeout_s:.0f}s; "
                    f"partitions {sorted(open_ranges)} not read to their end"
                )
            continue
        last_seen = time.monotonic()
        partition, offset = msg.partition() or 0, msg.offset() or 0
        error = msg.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                open_ranges.pop(partition, None)
                continue
            raise CommandError(f"reading {topic}: {error}")
        wanted = open_ranges.get(partition)
        if wanted is None or offset >= wanted.end:
            open_ranges.pop(partition, None)
            continue
        if offset + 1 >= wanted.end:
            open_ranges.pop(partition)
        yield _record(msg, partition, offset)


def _record(msg: Message, partition: int, offset: int) -> TopicRecord:
    kind, ms = msg.timestamp()
    headers = normalise(msg.headers())
    return TopicRecord(
        partition,
        offset,
        None if kind == TIMESTAMP_NOT_AVAILABLE else ms,
        msg.key(),
        msg.value(),
        headers,
    )
