"""A replay file as the dataflow's inbound source: each line becomes the Kafka record the
worker would have read, so the parse step and everything after it run unchanged.

Lines hold an inbound envelope (`{id, headers, body, timestamp}`) or a bare Meta webhook body
(`{"object": …, "entry": …}`, wrapped into an envelope with an id made from the file name and
line number). Blank lines are skipped. Anything else, JSON or not, is passed on as it is, so the
parser dead-letters it with its reason. The synthetic position is topic = the file's path,
partition 0, offset = the line number: a dead letter's `wa-source-offset` is the file line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from operators.finish import FinishTracker

Message = KafkaSourceMessage[bytes | None, bytes | None]
_PARTITION = "0"


@dataclass
class LineCounts:
    """What the source has read, for the replay's summary (written by the source only)."""

    lines: int = 0
    blank: int = 0
    records: int = 0  # lines handed to the parser
    bare_bodies: int = 0  # of those, bare webhook bodies wrapped into an envelope
    not_json: int = 0  # of those, lines that are not JSON at all


def line_record(line: bytes, number: int, source: Path) -> tuple[bytes, str]:
    """The inbound record value for one non-blank line, and what the line was."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return line, "not_json"
    if isinstance(data, dict) and "object" in data and "body" not in data:
        # Splice the line in as it is: the body keeps its exact bytes (no re-serialisation).
        head = {
            "id": f"replay-{source.stem}-{number}",
            "headers": {},
            "timestamp": datetime.now(UTC).isoformat(),
        }
        return json.dumps(head)[:-1].encode() + b', "body": ' + line + b"}", "bare"
    return line, "envelope"


class _FilePartition(StatefulSourcePartition[Message, tuple[int, int]]):
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

    def next_batch(self) -> list[Message]:
        if self._hold():
            return []  # the handler's breaker is open: take no new input meanwhile
        batch: list[Message] = []
        read = 0
        while len(batch) < self._batch_size:
            raw = self._file.readline()
            if not raw:
                break
            read += 1
            self._line += 1
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                self._counts.blank += 1
                continue
            value, kind = line_record(line, self._line, self._path)
            if kind == "bare":
                self._counts.bare_bodies += 1
            elif kind == "not_json":
                self._counts.not_json += 1
            batch.append(
                KafkaSourceMessage(
                    key=None, value=value, topic=self._topic, partition=0, offset=self._line
                )
            )
        self._counts.lines += read
        self._counts.records += len(batch)
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


class FileSource(FixedPartitionedSource[Message, tuple[int, int]]):
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
