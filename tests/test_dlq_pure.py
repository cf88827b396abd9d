"""The pure parts of the DLQ tools: time and offset options, ranges, redaction, capture lines,
which dead letters a re-drive takes. No Kafka or Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.webhooks import conversation_webhook, payload, signed_envelope
from wa_worker.capture import LineKind, capture_line
from wa_worker.dlq import (
    DeadLetterFilter,
    DeadLetterRecord,
    check_classes,
    latest_per_envelope,
    latest_per_event,
    parse_ref,
    redrive_records,
)
from wa_worker.redaction import redact_envelope
from wa_worker.timespec import parse_when
from wa_worker.topic_reader import OffsetRange, clamp, parse_offset_specs

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_times_are_iso_or_ages() -> None:
    assert parse_when("2h", NOW) == NOW - timedelta(hours=2)
    assert parse_when("90s", NOW) == NOW - timedelta(seconds=90)
    assert parse_when("1.5D", NOW) == NOW - timedelta(hours=36)
    assert parse_when("2026-11-29T10:00:00Z") == datetime(2026, 11, 29, 10, tzinfo=UTC)
    assert parse_when("2026-11-29T10:00") == datetime(2026, 11, 29, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="use ISO 8601"):
        parse_when("yesterday")


def test_offset_options() -> None:
    assert parse_offset_specs(["5", "1:7"]) == {None: 5, 1: 7}
    for bad in (["x"], ["1:"], ["-1"]):
        with pytest.raises(ValueError):
            parse_offset_specs(bad)


def test_ranges_are_the_intersection_of_every_bound() -> None:
    assert clamp(0, 10, (None,), (None,)) == OffsetRange(0, 10)
    assert clamp(3, 10, (1, 5), (8, None)) == OffsetRange(5, 8)
    assert clamp(0, 10, (7,), (4,)).size == 0  # nothing, never a negative range
    assert clamp(0, 10, (None,), (50,)) == OffsetRange(0, 10)  # never past the watermark


@given(
    st.integers(0, 50),
    st.integers(0, 50),
    st.lists(st.none() | st.integers(0, 80), max_size=3),
    st.lists(st.none() | st.integers(0, 80), max_size=3),
)
def test_ranges_stay_inside_the_watermarks(
    low: int, span: int, starts: list[int | None], ends: list[int | None]
) -> None:
    found = clamp(low, low + span, tuple(starts), tuple(ends))
    assert low <= found.start <= found.end <= max(low + span, found.start)
    assert found.size <= span


def test_redaction_keeps_structure_and_masks_texts_and_phones() -> None:
    raw = signed_envelope(
        "w1", json.loads(conversation_webhook("x", "31612345678", ["m1"]))["body"], b"s"
    )
    shown = redact_envelope(raw)
    message = shown["body"]["entry"][0]["changes"][0]["value"]["messages"][0]
    assert message["text"] == {"body": "***(6 chars)"}  # "msg m1"
    assert message["from"] == "***5678" and message["id"] == "m1"
    assert message["timestamp"] == "1700000000"
    text = json.dumps(shown)
    assert "31612345678" not in text and "msg m1" not in text and "Kerry" not in text
    assert redact_envelope(b"\xff{oops") == "<6 bytes, not JSON; --show-body shows them>"
    assert redact_envelope(b'{"id": "w", "body": "not json: +31612345678"}')["body"].startswith(
        "***("
    )


def test_capture_lines_keep_records_as_received() -> None:
    secret_signed = signed_envelope("w1", payload(), b"secret")
    line, kind = capture_line(secret_signed)
    assert kind is LineKind.ENVELOPE
    assert json.loads(line)["body"] == json.loads(secret_signed)["body"]  # raw bytes kept
    assert "\n" not in capture_line(json.dumps(payload(), indent=2).encode())[0]
    assert capture_line(json.dumps(payload()).encode())[1] is LineKind.JSON
    assert capture_line(b'{"id": "", "body": {}}')[1] is LineKind.JSON  # empty id: no envelope
    line, kind = capture_line(b"\xff not json")
    assert kind is LineKind.NOT_JSON and isinstance(json.loads(line), str)


def _letter(
    offset: int, event: str | None, cls: str = "handler_permanent", value: bytes = b"{}"
) -> DeadLetterRecord:
    reason = "HTTP 422: Unknown customer" if event else "Expecting value: line 1 column 2"
    headers = {"wa-error-class": cls, "wa-error-reason": reason}
    if event:
        headers |= {"wa-event-key": event, "wa-webhook-id": f"w-{event}"}
    return DeadLetterRecord(0, offset, b"k", value, headers, 1_000 + offset)


def test_a_redrive_takes_each_event_once_and_marks_where_it_came_from() -> None:
    letters = [_letter(0, "a"), _letter(1, "b"), _letter(2, "a"), _letter(3, None, "invalid_json")]
    assert [r.offset for r in latest_per_event(letters)] == [1, 2, 3]
    ((key, value, headers),) = redrive_records([letters[2]], "dlq.t", NOW)
    assert key == b"w-a" and value == b"{}"
    assert dict(headers) == {
        "wa-redrive-of": b"dlq.t/0/2",
        "wa-redrive-at": b"2026-11-29T12:00:00.000+00:00",
    }


def test_filters() -> None:
    letters = [_letter(0, "a"), _letter(1, None, "invalid_json")]
    assert [
        r.offset for r in letters if DeadLetterFilter(reason="unknown CUSTOMER").matches(r)
    ] == [0]
    only_json = DeadLetterFilter(error_classes=frozenset({"invalid_json"}))
    assert [r.offset for r in letters if only_json.matches(r)] == [1]
    assert [r.offset for r in letters if DeadLetterFilter(refs=frozenset({"0:1"})).matches(r)] == [
        1
    ]
    assert all(DeadLetterFilter().matches(r) for r in letters)


def test_keyless_dead_letters_are_redriven_once_per_envelope() -> None:
    # 0 and 1 are two bad records; 2 and 3 their re-driven copies, dead-lettered again.
    letters = [
        _letter(0, None, "invalid_envelope", b"x"),
        _letter(1, None, "invalid_envelope", b"y"),
        _letter(2, None, "invalid_envelope", b"x"),
        _letter(3, None, "invalid_envelope", b"y"),
        _letter(4, "a", value=b"x"),  # events keep their own rule (latest_per_event)
        _letter(5, "b", value=b"x"),
    ]
    assert [r.offset for r in latest_per_envelope(letters)] == [2, 3, 4, 5]
    assert latest_per_envelope(latest_per_envelope(letters)) == latest_per_envelope(letters)


def test_classes_and_refs_are_checked() -> None:
    assert check_classes(["invalid_json", "invalid_json"]) == {"invalid_json"}
    with pytest.raises(ValueError, match=r"unknown --class nosuch \(one of: invalid_json, "):
        check_classes(["invalid_json", "nosuch"])
    assert parse_ref("2:15") == (2, 15)
    assert [parse_ref(r) for r in ("2:", ":1", "a:1", "1:-1", "wamid.x")] == [None] * 5
