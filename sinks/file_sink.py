"""Writes outcome records to `processed.jsonl` and `dlq.jsonl`, then marks their events done.

Each line is the record the Kafka sink would produce (`sinks.records.to_record`): topic, key,
headers and value, so a dead letter carries the same error context headers. The value is the
record's bytes as UTF-8 text (`jq '.value | fromjson'` for processed records), or base64 in
`value_base64` when the bytes are not UTF-8 (a dead-lettered line may hold anything).
`to_record` already applied Kafka's checks (a result that is not JSON, a record over
KAFKA_MAX_MESSAGE_BYTES: a `result_unwritable` dead letter), so a file holds what Kafka would.

Same crash-safety contract as the Kafka sink: only once a batch is written out (flushed, and
fsynced when the done markers outlive the process, i.e. in Redis) are its events marked done.
"""

from __future__ import annotations

import base64
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from pydantic import BaseModel

from wa_worker.core import tracing
from wa_worker.models.headers import attempts_of, decoded
from wa_worker.sinks.kafka_sink import DoneMarks
from wa_worker.sinks.records import KafkaRecord

PROCESSED_FILE = "processed.jsonl"
DLQ_FILE = "dlq.jsonl"


class FileRecord(BaseModel):
    """One line of processed.jsonl or dlq.jsonl."""

    topic: str
    key: str | None = None
    headers: dict[str, str]
    value: str | None = None
    value_base64: str | None = None

    @classmethod
    def of(cls, record: KafkaRecord) -> FileRecord:
        try:
            value, value_b64 = record.value.decode(), None
        except UnicodeDecodeError:
            value, value_b64 = None, base64.b64encode(record.value).decode()
        return cls(
            topic=record.topic,
            key=record.key.decode(errors="replace") if record.key is not None else None,
            headers=decoded(record.headers),
            value=value,
            value_base64=value_b64,
        )

    def raw_value(self) -> bytes:
        if self.value_base64 is not None:
            return base64.b64decode(self.value_base64)
        return (self.value or "").encode()


@dataclass
class OutcomeTally:
    """What the sink wrote, for the replay's summary."""

    processed: int = 0
    retried_events: int = 0  # processed or dead-lettered after more than one attempt
    dead_lettered: Counter[str] = field(default_factory=Counter)
    dead_lettered_events: int = 0  # dead letters of single events (not whole bad records)

    on_count: Callable[[int], None] = lambda records: None  # e.g. a progress bar

    def count(self, record: KafkaRecord) -> None:
        attempts = attempts_of(record.headers) or 0
        self.retried_events += attempts > 1
        if record.error_class is None:
            self.processed += 1
        else:
            self.dead_lettered[record.error_class] += 1
            self.dead_lettered_events += record.done is not None


class _FilePartition(StatelessSinkPartition[tuple[str, KafkaRecord]]):
    def __init__(self, out_dir: Path, marks: DoneMarks, tally: OutcomeTally, durable: bool) -> None:
        # Append: the replay truncates the files before the run, workers only add lines.
        self._processed: BinaryIO = (out_dir / PROCESSED_FILE).open("ab")
        self._dlq: BinaryIO = (out_dir / DLQ_FILE).open("ab")
        self._marks = marks
        self._tally = tally
        self._durable = durable

    def write_batch(self, keyed: list[tuple[str, KafkaRecord]]) -> None:
        started_ns = time.time_ns()
        items = [record for _, record in keyed]  # the key is the Kafka sink's (dataflow.py)
        processed = [r for r in items if r.error_class is None]
        dead = [r for r in items if r.error_class is not None]
        for out, records in ((self._processed, processed), (self._dlq, dead)):
            if records:
                out.write(b"".join(_line(r) for r in records))
                out.flush()
                if self._durable:
                    os.fsync(out.fileno())
        for record in items:
            self._tally.count(record)
        self._tally.on_count(len(items))
        if tracing.ENABLED:
            tracing.written(items, "write", started_ns)
        self._marks.mark_done([r.done for r in items if r.done is not None])

    def close(self) -> None:
        self._processed.close()
        self._dlq.close()


def _line(record: KafkaRecord) -> bytes:
    return FileRecord.of(record).model_dump_json(exclude_none=True).encode() + b"\n"


class FileOutcomeSink(DynamicSink[tuple[str, KafkaRecord]]):
    def __init__(self, out_dir: Path, marks: DoneMarks, tally: OutcomeTally, durable: bool) -> None:
        self._out_dir = out_dir
        self._marks = marks
        self._tally = tally
        self._durable = durable

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FilePartition:
        return _FilePartition(self._out_dir, self._marks, self._tally, self._durable)
