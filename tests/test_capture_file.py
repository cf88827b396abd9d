"""The capture file format (wa_worker/models/capture_file.py): one rule for what a line is, and any
Kafka record written as a line reads back as itself."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from wa_worker.models.capture_file import (
    BadKind,
    BadLines,
    LineKind,
    read_file,
    read_line,
    record_line,
    records,
)

maybe_bytes = st.none() | st.binary(max_size=40)
headers = st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8)), max_size=3).map(tuple)


@given(key=maybe_bytes, value=maybe_bytes, head=headers)
def test_any_record_reads_back_as_itself(
    key: bytes | None, value: bytes | None, head: tuple[tuple[str, bytes], ...]
) -> None:
    line = record_line(key, value, head)
    assert b"\n" not in line
    back = read_line(line + b"\n", 1, "f")
    assert back.kind in (LineKind.ENVELOPE, LineKind.RECORD)
    assert (back.key, back.value, back.headers) == (key, value, head)


@given(text=st.text(max_size=30), key=st.text(max_size=10))
def test_envelopes_keyed_by_their_id_are_written_as_they_are(text: str, key: str) -> None:
    value = json.dumps({"id": key, "body": text}, ensure_ascii=False).encode()
    assert record_line(key.encode(), value) == value  # line separators inside included
    assert record_line(key.encode() + b"x", value) != value  # keyed otherwise: a kafka_record


def test_one_rule_for_every_kind_of_line() -> None:
    def kind(line: bytes) -> LineKind | BadKind:
        read = read_line(line, 4, "day")
        return read.bad or read.kind

    assert kind(b" \t\r\n") is LineKind.BLANK
    assert kind(b'{"id": "w", "body": {}}\r\n') is LineKind.ENVELOPE
    assert kind(b'{"object": "whatsapp_business_account", "entry": []}') is LineKind.BARE_BODY
    assert kind(b'{"kafka_record": {"key": null, "value": null}}') is LineKind.RECORD
    assert kind(b'{"id": "w", "body": {}, "x": "\xff"}') is BadKind.NOT_UTF8
    assert kind(b"not json") is BadKind.NOT_JSON
    assert kind(b"[" * 100_000 + b"]" * 100_000) is BadKind.TOO_DEEP
    assert kind(b"[1, 2]") is BadKind.SHAPE
    assert kind(b'{"body": {}}') is BadKind.SHAPE  # no id: not wrapped into a new envelope
    assert kind(b'{"id": "w"}') is BadKind.SHAPE
    assert kind(b'{"kafka_record": {"value": 1}}') is BadKind.BAD_RECORD
    assert kind(b'{"kafka_record": {"value": "a", "value_base64": "YQ=="}}') is BadKind.BAD_RECORD
    assert kind(b'{"kafka_record": {}, "id": "w", "body": {}}') is BadKind.BAD_RECORD
    bad = read_line(b"{oops", 9, "day")
    assert bad.value == b"{oops" and bad.note("day.jsonl").startswith("day.jsonl:9: not JSON")


def test_files_split_on_newlines_only_and_name_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "jq.jsonl"
    envelope = '{"id":"w1","body":{"text":"a\u2028b\u2029c\x85d"}}'.encode()
    path.write_bytes(envelope + b"\n\n\xff\n[]\n" + envelope)  # no newline at the end
    lines = list(read_file(path))
    assert [line.kind for line in lines] == [
        LineKind.ENVELOPE,
        LineKind.BLANK,
        LineKind.BAD,
        LineKind.BAD,
        LineKind.ENVELOPE,
    ]
    bad = BadLines(path, shown=1)
    assert [value for _, value, _ in records(lines, bad)] == [envelope, envelope]
    assert bad.count == 2
    assert bad.report() == [
        f"{path}:3: not UTF-8 (byte 1 of the line)",
        f"{path}: and 1 more bad lines",
    ]
