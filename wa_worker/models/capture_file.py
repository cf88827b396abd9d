"""The capture file: JSON lines that `capture` writes and `replay` and `publish` read. The one
reader and the one writer of the format, so every command agrees on what a line is.

Lines are split on b"\\n" alone (a trailing "\\r" is dropped): a JSON string may hold U+2028 and
other characters that `str.splitlines` would split on. Each line is one of:

- blank (only whitespace): skipped;
- an envelope, a JSON object with "id" and "body": the record is the line's bytes as they are,
  keyed by the id (as the webhook edge keys it);
- a bare Meta webhook body, an object with "object" and no "body": wrapped into an envelope with
  id `replay-<file stem>-<line>`, the body's bytes spliced in unchanged;
- a Kafka record as captured, `{"kafka_record": {"key", "value", "headers"}}`: exactly that
  record. `value` is the bytes as text, `value_base64` when they are not UTF-8, null for a
  tombstone (likewise `key`/`key_base64`; headers are `{"name", "value"|"value_base64"}`);
- anything else is bad, with a reason (not UTF-8, not JSON, nested too deep, another shape, a
  malformed kafka_record): no command treats it as a record of its own.

`capture` writes a record as its bare value when reading that line back gives the same key,
value and headers; every other record (not an envelope, keyed otherwise, with Kafka headers, a
tombstone, bytes that are not one line of UTF-8) as a kafka_record. So capture, then publish
puts the same records back on a topic, byte for byte. Pure apart from `read_file`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

RECORD_FIELD = "kafka_record"
Headers = tuple[tuple[str, bytes], ...]


class LineKind(StrEnum):
    BLANK = "blank"
    ENVELOPE = "envelope"
    BARE_BODY = "bare_body"
    RECORD = "record"  # a Kafka record as captured
    BAD = "bad"


class BadKind(StrEnum):
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    TOO_DEEP = "too_deep"
    SHAPE = "shape"  # JSON, but none of the shapes above
    BAD_RECORD = "bad_record"  # a kafka_record that does not describe a record


@dataclass(frozen=True, slots=True)
class FileLine:
    """One line and the record it stands for. A bad line's value is the line itself (replay
    hands it to the parser, which dead-letters it as the worker would)."""

    number: int
    kind: LineKind
    value: bytes | None = None
    key: bytes | None = None
    headers: Headers = ()
    bad: BadKind | None = None
    reason: str = ""

    def note(self, path: Path | str) -> str:
        return f"{path}:{self.number}: {self.reason}"


def read_line(raw: bytes, number: int, stem: str) -> FileLine:
    """What one line of a file named `<stem>.jsonl` is (`raw` with or without its newline)."""
    line = raw[:-1] if raw.endswith(b"\n") else raw
    line = line[:-1] if line.endswith(b"\r") else line
    if not line.strip():
        return FileLine(number, LineKind.BLANK)
    try:
        text = line.decode()
    except UnicodeDecodeError as exc:
        return _bad(number, line, BadKind.NOT_UTF8, f"not UTF-8 (byte {exc.start + 1} of the line)")
    try:
        data = json.loads(text)
    except ValueError as exc:
        return _bad(number, line, BadKind.NOT_JSON, f"not JSON: {exc}"[:200])
    except RecursionError:
        return _bad(number, line, BadKind.TOO_DEEP, "JSON nested too deep to read")
    if not isinstance(data, dict):
        return _bad(number, line, BadKind.SHAPE, f"a JSON {_type(data)}, {_SHAPES}")
    if RECORD_FIELD in data:
        return _record_line(number, line, data)
    if "id" in data and "body" in data:
        key = data["id"].encode() if isinstance(data["id"], str) else None
        return FileLine(number, LineKind.ENVELOPE, line, key)
    if "object" in data and "body" not in data:
        webhook_id = f"replay-{stem}-{number}"
        return FileLine(
            number, LineKind.BARE_BODY, wrap_body(line, webhook_id), webhook_id.encode()
        )
    missing = "id" if "body" in data else "body" if "id" in data else "id and body"
    return _bad(number, line, BadKind.SHAPE, f"an object without {missing}, {_SHAPES}")


_SHAPES = "not an envelope {id, body}, a Meta webhook body {object, entry} or a kafka_record"


def wrap_body(body: bytes, webhook_id: str) -> bytes:
    """An envelope around a bare body, spliced in as it is (no re-serialisation)."""
    head = {"id": webhook_id, "headers": {}, "timestamp": datetime.now(UTC).isoformat()}
    return json.dumps(head)[:-1].encode() + b', "body": ' + body + b"}"


def read_file(path: Path) -> Iterator[FileLine]:
    """Every line of the file, in order (blank ones included, for the line numbers)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):  # binary files split on b"\n" only
            yield read_line(raw, number, path.stem)


def records(
    lines: Iterable[FileLine], bad: BadLines
) -> Iterator[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """(key, value, headers) of each record line, to publish; bad lines go to `bad`."""
    for line in lines:
        if line.kind is LineKind.BAD:
            bad.add(line)
        elif line.kind is not LineKind.BLANK:
            yield line.key, line.value, list(line.headers)


@dataclass
class BadLines:
    """The bad lines of a file, named by line number (the first few; all are counted)."""

    path: Path
    count: int = 0
    shown: int = 10
    notes: list[str] = field(default_factory=list)

    def add(self, line: FileLine) -> None:
        self.count += 1
        if len(self.notes) < self.shown:
            self.notes.append(line.note(self.path))

    def report(self) -> list[str]:
        more = self.count - len(self.notes)
        return self.notes + ([f"{self.path}: and {more} more bad lines"] if more else [])


def record_line(key: bytes | None, value: bytes | None, headers: Headers = ()) -> bytes:
    """The line (without newline) that reads back as exactly this record."""
    if value is not None and b"\n" not in value:
        back = read_line(value, 0, "")
        if back.kind is LineKind.ENVELOPE and (back.value, back.key, headers) == (value, key, ()):
            return value
    record: dict[str, Any] = {**_bytes_field("key", key), **_bytes_field("value", value)}
    if headers:
        record["headers"] = [{"name": n, **_bytes_field("value", v)} for n, v in headers]
    return json.dumps({RECORD_FIELD: record}, separators=(",", ":")).encode()


def _bytes_field(name: str, data: bytes | None) -> dict[str, str | None]:
    if data is None:
        return {name: None}
    try:
        return {name: data.decode()}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode()}


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    value: str | None = None
    value_base64: str | None = None


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    key: str | None = None
    key_base64: str | None = None
    value: str | None = None
    value_base64: str | None = None
    headers: list[_Header] = []


def _record_line(number: int, line: bytes, data: dict[str, Any]) -> FileLine:
    if len(data) != 1:
        return _bad(number, line, BadKind.BAD_RECORD, f"{RECORD_FIELD} with other fields beside")
    try:
        record = _Record.model_validate(data[RECORD_FIELD])
        key = _decoded(record.key, record.key_base64, "key")
        value = _decoded(record.value, record.value_base64, "value")
        headers = tuple(
            (h.name, _decoded(h.value, h.value_base64, "header value") or b"")
            for h in record.headers
        )
    except ValidationError as exc:
        wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        return _bad(number, line, BadKind.BAD_RECORD, f"not a {RECORD_FIELD}: {wrong}"[:200])
    except ValueError as exc:
        return _bad(number, line, BadKind.BAD_RECORD, f"not a {RECORD_FIELD}: {exc}"[:200])
    return FileLine(number, LineKind.RECORD, value, key, headers)


def _decoded(text: str | None, b64: str | None, name: str) -> bytes | None:
    if text is not None and b64 is not None:
        raise ValueError(f"both {name} and its base64")
    if b64 is not None:
        try:
            return base64.b64decode(b64, validate=True)
        except binascii.Error:
            raise ValueError(f"{name} is not base64") from None
    return text.encode() if text is not None else None


def _bad(number: int, line: bytes, kind: BadKind, reason: str) -> FileLine:
    return FileLine(number, LineKind.BAD, line, bad=kind, reason=reason)


def _type(data: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(data), "number"
    )
