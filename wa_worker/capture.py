"""Save records of a topic as JSON lines in the inbound envelope format, so production traffic
can be replayed locally (`wa-worker replay`). Pure line-making apart from `capture`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TextIO

from pydantic import ValidationError

from wa_worker import topic_reader
from wa_worker.models.records import Envelope
from wa_worker.settings import Settings


class LineKind(Enum):
    ENVELOPE = "envelope"
    JSON = "json"  # JSON, but not an envelope (a bare Meta payload, a wrong shape)
    NOT_JSON = "not_json"
    TOO_DEEP = "too_deep"  # JSON nested deeper than Python can parse (saved as a JSON string)


@dataclass
class CaptureSummary:
    envelopes: int = 0
    raw: int = 0  # not an envelope: saved as received (JSON as is, other bytes as a JSON string)
    not_json: int = 0  # of the raw ones, those that were not JSON at all
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


def capture_line(value: bytes) -> tuple[str, LineKind]:
    """One JSON line for a record value. An envelope is written as received, on one line (a raw
    string body keeps its exact bytes, so its signature still verifies)."""
    try:
        data = json.loads(value)
        line = json.dumps(data, separators=(",", ":"))
    except ValueError:
        return json.dumps(value.decode(errors="replace")), LineKind.NOT_JSON
    except RecursionError:  # one such record (the fuzz harness sends them) must not stop it all
        return json.dumps(value.decode(errors="replace")), LineKind.TOO_DEEP
    try:
        Envelope.model_validate(data)
    except ValidationError:
        return line, LineKind.JSON
    return line, LineKind.ENVELOPE


def capture(
    settings: Settings,
    topic: str,
    request: topic_reader.ReadRequest,
    out: TextIO,
    on_planned: Callable[[int], None] = lambda total: None,
    on_record: Callable[[], None] = lambda: None,
) -> CaptureSummary:
    """Write every record in range to `out`; ends at the high watermarks seen at the start."""
    summary = CaptureSummary()
    with topic_reader.consumer(settings) as client:
        ranges = topic_reader.plan(client, topic, request)
        on_planned(sum(r.size for r in ranges.values()))
        for record in topic_reader.read(client, topic, ranges):
            line, kind = capture_line(record.value)
            out.write(line + "\n")
            summary.add(record.partition, record.offset, kind)
            on_record()
    return summary
