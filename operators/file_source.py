"""A replay file as the dataflow's inbound source: each line becomes the Kafka record the
worker would have read, so the parse step and everything after it run unchanged.

What a line is (envelope, bare Meta body, captured Kafka record, blank, bad) is decided
by `wa_worker.models.capture_file`, the same rule `publish` follows. Blank lines are skipped; a
bad line is passed on as it is, so the parser dead-letters it with its reason, and is named in the
summary by its line number. The synthetic position is topic = the file's path, partition 0,
offset = the line number: a dead letter's `wa-source-offset` is the file line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from wa_worker.models.capture_file import BadKind, BadLines, FileLine, LineKind, read_line
from wa_worker.operators.finish import FinishTracker
from wa_worker.operators.inbound import InboundItem

_PARTITION = "0"
_NOT_JSON = {BadKind.NOT_UTF8, BadKind.NOT_JSON, BadKind.TOO_DEEP}


@dataclass
class LineCounts:
    """What the source has read, for the replay's summary (written by the source only)."""

    path: Path
    lines: int = 0
    blank: int = 0
    envelopes: int = 0  # envelope lines, bare bodies included
    bare_bodies: int = 0  # of those, bare webhook bodies wrapped into an envelope
    kafka_records: int = 0  # captured Kafka records, passed on as they were
    not_json: int = 0  # of the bad lines, those that are not JSON (or not UTF-8) at all
    bad: BadLines = field(init=False)

    def __post_init__(self) -> None:
        self.bad = BadLines(self.path)

    def add(self, line: FileLine) -> None:
        if line.kind is LineKind.BLANK:
            self.blank += 1
        elif line.kind is LineKind.RECORD:
            self.kafka_records += 1
        elif line.kind is LineKind.BAD:
            self.bad.add(line)
            self.not_json += line.bad in _NOT_JSON
        else:
            self.envelopes += 1
            self.bare_bodies += line.kind is LineKind.BARE_BODY


# Typed as the Kafka input is, so the flow takes either (a file yields messages only).
class _FilePartition(StatefulSourcePartition[InboundItem, tuple[int, int]]):
    def __init__(
        self,
        path: Path,
        resume: tuple[int, int] | None,
        batch_size: int,
        counts: LineCounts,
        tracker: FinishTracker,
        hold: Callable[[], bool],
        progress: Callable[[int], None],
    ) -> None:
        self._path = path
        self._topic = str(path)
        self._file: BinaryIO = path.open("rb")
        offset, self._line = resume or (0, 0)
        self._file.seek(offset)
        self._batch_size = batch_size
        self._counts = counts
        self._tracker = tracker
        self._hold = hold
        self._progress = progress

    def next_batch(self) -> list[InboundItem]:
        if self._hold():
            return []  # the handler's breaker is open: take no new input meanwhile
        batch: list[InboundItem] = []
        read = 0
        while len(batch) < self._batch_size:
            raw = self._file.readline()
            if not raw:
                break
            read += 1
            self._line += 1
            line = read_line(raw, self._line, self._path.stem)
            self._counts.add(line)
            if line.kind is LineKind.BLANK:
                continue
            batch.append(
                KafkaSourceMessage(
                    key=line.key,
                    value=line.value,
                    headers=list(line.headers),
                    topic=self._topic,
                    partition=0,
                    offset=self._line,
                )
            )
        self._counts.lines += read
        self._tracker.emitted(len(batch))  # before the batch leaves: the run is not finished
        self._progress(read)
        if not read:
            self._tracker.input_ended()
            raise StopIteration
        return batch

    def snapshot(self) -> tuple[int, int]:
        return self._file.tell(), self._line

    def close(self) -> None:
        self._file.close()


class FileSource(FixedPartitionedSource[InboundItem, tuple[int, int]]):
    """One partition: the file is read once, in order, by one worker."""

    def __init__(
        self,
        path: Path,
        counts: LineCounts,
        tracker: FinishTracker,
        hold: Callable[[], bool] = lambda: False,
        progress: Callable[[int], None] = lambda lines: None,
        batch_size: int = 1000,
    ) -> None:
        self._path = path
        self._counts = counts
        self._tracker = tracker
        self._hold = hold
        self._progress = progress
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [_PARTITION]

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
    ) -> _FilePartition:
        return _FilePartition(
            self._path,
            resume_state,
            self._batch_size,
            self._counts,
            self._tracker,
            self._hold,
            self._progress,
        )
