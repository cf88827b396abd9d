"""Look into the dead-letter topic, send records back through the worker, and publish records
to the inbound topic (`dlq redrive`, and `publish` of a capture file)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from wa_worker.cli import topic_reader
from wa_worker.core.kafka_produce import produce_waiting
from wa_worker.core.timespec import from_ms
from wa_worker.errors import CommandError, PublishError
from wa_worker.models.headers import (
    PREFIX,
    AnyHeaders,
    DeadLetterHeaders,
    Headers,
    RedriveHeaders,
    decoded,
)
from wa_worker.models.records import ErrorClass
from wa_worker.settings import Settings

OutRecord = tuple[bytes | None, bytes | None, Headers]  # value None: tombstone


@dataclass(frozen=True)
class DeadLetterRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int | None = None  # when it was dead-lettered (the record's Kafka time)

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    @cached_property
    def context(self) -> DeadLetterHeaders:
        return DeadLetterHeaders.from_headers(self.headers)

    @property
    def event_key(self) -> str | None:
        return self.context.event_key

    @property
    def webhook_id(self) -> str | None:
        return self.context.webhook_id

    @property
    def error_class(self) -> str:
        return self.context.error_class

    @property
    def reason(self) -> str:
        return self.context.error_reason

    @property
    def at(self) -> datetime | None:
        return from_ms(self.timestamp_ms)

    def between(self, since: datetime | None, until: datetime | None) -> bool:
        """Dead-lettered at or after `since` and before `until` (a record without a time is in
        every range, as offsets_for_times cannot place it either)."""
        at = self.at
        return at is None or ((since is None or at >= since) and (until is None or at < until))

    def summary(self) -> dict[str, Any]:
        at = self.at
        return {
            "partition": self.partition,
            "offset": self.offset,
            "dead-lettered-at": at.isoformat() if at else None,
            **{k.removeprefix(PREFIX): v for k, v in self.headers.items()},
            "bytes": len(self.value),
        }


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a command works on; every given criterion must hold."""

    error_classes: frozenset[str] = field(default_factory=frozenset)
    reason: str | None = None  # case-insensitive part of wa-error-reason
    event_key: str | None = None
    webhook_id: str | None = None
    refs: frozenset[str] = field(default_factory=frozenset)  # "partition:offset"

    def matches(self, record: DeadLetterRecord) -> bool:
        return (
            (not self.error_classes or record.error_class in self.error_classes)
            and (self.reason is None or self.reason.lower() in record.reason.lower())
            and (self.event_key is None or record.event_key == self.event_key)
            and (self.webhook_id is None or record.webhook_id == self.webhook_id)
            and (not self.refs or record.ref in self.refs)
        )


def read_dead_letters(
    settings: Settings, request: topic_reader.ReadRequest | None = None
) -> Iterator[DeadLetterRecord]:
    """The DLQ records in range (all by default), up to the end seen when reading started."""
    topic = settings.kafka_dlq_topic
    with topic_reader.consumer(settings) as client:
        ranges = topic_reader.plan(client, topic, request or topic_reader.ReadRequest())
        for record in topic_reader.read(client, topic, ranges):
            yield from_topic_record(record)


def parse_ref(ref: str) -> tuple[int, int] | None:
    """`PARTITION:OFFSET` as numbers; None when the text is not one."""
    partition, sep, offset = ref.partition(":")
    if sep and partition.isdigit() and offset.isdigit():
        return int(partition), int(offset)
    return None


def read_refs(settings: Settings, refs: Iterable[str]) -> list[DeadLetterRecord]:
    """The dead letters at these `PARTITION:OFFSET`s, reading only those offsets. A ref that is
    not on the topic is an error naming it, not an empty answer."""
    topic = settings.kafka_dlq_topic
    wanted: dict[tuple[int, int], str] = {}
    for ref in refs:
        position = parse_ref(ref)
        if position is None:
            raise CommandError(f"--ref {ref} is not PARTITION:OFFSET")
        wanted[position] = ref
    found: list[DeadLetterRecord] = []
    with topic_reader.consumer(settings) as client:
        everything = topic_reader.plan(client, topic, topic_reader.ReadRequest())
        for p, o in sorted(wanted):
            present = everything.get(p)
            if present is None or not present.start <= o < present.end:
                continue
            one = {p: topic_reader.OffsetRange(o, o + 1)}
            found.extend(from_topic_record(r) for r in topic_reader.read(client, topic, one))
    missing = [ref for position, ref in sorted(wanted.items()) if position not in _positions(found)]
    if missing:
        raise CommandError(f"no dead letter {', '.join(missing)} on {topic}")
    return found


def _positions(records: Iterable[DeadLetterRecord]) -> set[tuple[int, int]]:
    return {(r.partition, r.offset) for r in records}


def check_classes(classes: Iterable[str]) -> frozenset[str]:
    """The --class values, all of them error classes the worker writes."""
    known = [c.value for c in ErrorClass]
    unknown = sorted(set(classes) - set(known))
    if unknown:
        raise CommandError(f"unknown --class {', '.join(unknown)} (one of: {', '.join(known)})")
    return frozenset(classes)


def from_topic_record(record: topic_reader.TopicRecord) -> DeadLetterRecord:
    headers = decoded(record.headers)
    value = record.value if record.value is not None else b""
    return DeadLetterRecord(
        record.partition, record.offset, record.key, value, headers, record.timestamp_ms
    )


def select(
    records: Iterable[DeadLetterRecord], where: DeadLetterFilter | None = None
) -> list[DeadLetterRecord]:
    """Matching records, oldest first (by dead-letter time, then partition and offset)."""
    chosen = [r for r in records if where is None or where.matches(r)]
    return sorted(chosen, key=lambda r: (r.timestamp_ms or 0, r.partition, r.offset))


def latest_per_event(records: list[DeadLetterRecord]) -> list[DeadLetterRecord]:
    """One record per event key (its newest dead letter); records without one are all kept.
    An event dead-lettered twice needs one re-drive, not two."""
    latest: dict[str, DeadLetterRecord] = {}
    for record in records:
        if record.event_key:
            latest[record.event_key] = record
    return [r for r in records if not r.event_key or latest[r.event_key] is r]


def latest_per_envelope(records: list[DeadLetterRecord]) -> list[DeadLetterRecord]:
    """Of records without an event key, one per envelope (its newest dead letter); the others
    are all kept. A re-driven copy that fails again is dead-lettered with the same bytes and no
    trace of the re-drive (the worker does not carry inbound headers into the DLQ), so without
    this each re-drive would send the original and every earlier copy: 6, 12, 24. Sending the
    same bytes twice is never needed: the worker would see the same input twice."""
    latest: dict[bytes, DeadLetterRecord] = {}
    for record in records:
        if not record.event_key:
            latest[record.value] = record
    return [r for r in records if r.event_key or latest[r.value] is r]


def publish(
    settings: Settings,
    records: Iterable[OutRecord],
    on_sent: Callable[[], None] | None = None,
) -> int:
    """Write envelopes to the inbound topic; raise unless Kafka acknowledged every one.

    A record Kafka refuses (one over message.max.bytes, say) does not stop the others: a re-drive
    has already reset their markers, so sending all it can and naming the failures beats a
    partial re-drive without a count."""
    producer = Producer(settings.producer_config())
    failures: list[str] = []
    total = 0
    acknowledged = 0

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        nonlocal acknowledged
        if err is not None:
            failures.append(f"{_describe(msg.key(), msg.headers())}: {err.str()}")
            return
        acknowledged += 1
        if on_sent is not None:
            on_sent()

    for key, value, headers in records:
        total += 1
        try:
            produce_waiting(
                producer, settings.kafka_inbound_topic, value, key, headers, on_delivery
            )
        except KafkaException as exc:  # refused before queueing (too large, ...)
            failures.append(f"{_describe(key, headers)}: {exc.args[0].str()}")
        producer.poll(0)
    remaining = producer.flush(settings.kafka_flush_timeout_s)
    if remaining or failures:
        unacknowledged = f", {remaining} not acknowledged in time" if remaining else ""
        raise PublishError(
            f"published {acknowledged} of {total} records into {settings.kafka_inbound_topic}"
            f"{unacknowledged}; {len(failures)} failed: {'; '.join(failures[:3])}"
            + (f" (and {len(failures) - 3} more)" if len(failures) > 3 else "")
        )
    return acknowledged


def _describe(key: bytes | None, headers: AnyHeaders) -> str:
    """A record as the operator knows it: the dead letter it re-drives, else its key."""
    redrive = RedriveHeaders.from_headers(headers)
    if redrive is not None:
        return f"dead letter {redrive.of}"
    return f"key {key.decode(errors='replace')}" if key else "a record without key"


def redrive_records(
    records: list[DeadLetterRecord], dlq_topic: str, at: datetime | None = None
) -> list[OutRecord]:
    """The DLQ records as inbound records again (keyed by webhook id, as the edge does), marked
    with the dead letter they come from and when they were re-driven."""
    when = (at or datetime.now(UTC)).isoformat(timespec="milliseconds")
    out: list[OutRecord] = []
    for r in records:
        key = r.webhook_id.encode() if r.webhook_id else r.key
        headers = RedriveHeaders(f"{dlq_topic}/{r.partition}/{r.offset}", when).to_headers()
        out.append((key, r.value, headers))
    return out
