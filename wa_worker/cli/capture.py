"""Save records of a topic as a capture file (`wa_worker.models.capture_file`), so production
traffic can be replayed locally (`wa-worker replay`) or published again (`wa-worker publish`)
with the same bytes. Pure line-making apart from `capture`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import BinaryIO

from wa_worker.cli import topic_reader
from wa_worker.models.capture_file import Headers, record_line
from wa_worker.settings import Settings


class LineKind(Enum):
    ENVELOPE = "envelope"  # the value as it is: an envelope keyed by its id
    RECORD = "record"  # any other record, as a kafka_record line (JSON, a wrong shape, ...)
    NOT_JSON = "not_json"  # a kafka_record whose value is not JSON (or a tombstone)
    TOO_DEEP = "too_deep"  # a kafka_record whose value is JSON nested too deep to parse


@dataclass
class CaptureSummary:
    envelopes: int = 0
    raw: int = 0  # kafka_record lines: not an envelope keyed by its id, saved byte for byte
    not_json: int = 0  # of the raw ones, those whose value is not JSON at all
    too_deep: int = 0  # of the raw ones, JSON nested too deep to parse
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition: first, last

    @property
    def records(self) -> int:
        return self.envelopes + self.raw

    def add(self, partition: int, offset: int, kind: LineKind) -> None:
        first, _ = self.offsets.get(partition, (offset, offset))
        self.offsets[partition] = (first, offset)
        if kind is LineKind.ENVELOPE:
            self.envelopes += 1
        else:
            self.raw += 1
            self.not_json += kind is LineKind.NOT_JSON
            self.too_deep += kind is LineKind.TOO_DEEP


def capture_line(
    value: bytes | None, key: bytes | None = None, headers: Headers = ()
) -> tuple[bytes, LineKind]:
    """One line (without newline) for a record, and what it held."""
    line = record_line(key, value, headers)
    if line == value:  # a kafka_record line is always longer than the value it holds
        return line, LineKind.ENVELOPE
    try:
        json.loads(value or b"")
    except ValueError:
        return line, LineKind.NOT_JSON
    except RecursionError:  # one such record (the fuzz harness sends them) must not stop it all
        return line, LineKind.TOO_DEEP
    return line, LineKind.RECORD


def capture(
    settings: Settings,
    topic: str,
    request: topic_reader.ReadRequest,
    out: BinaryIO,
    on_planned: Callable[[int], None] = lambda total: None,
    on_record: Callable[[], None] = lambda: None,
) -> CaptureSummary:
    """Write every record in range to `out`; ends at the high watermarks seen at the start."""
    summary = CaptureSummary()
    with topic_reader.consumer(settings) as client:
        ranges = topic_reader.plan(client, topic, request)
        on_planned(sum(r.size for r in ranges.values()))
        for record in topic_reader.read(client, topic, ranges):
            line, kind = capture_line(record.value, record.key, record.headers)
            out.write(line + b"\n")
            summary.add(record.partition, record.offset, kind)
            on_record()
    return summary
