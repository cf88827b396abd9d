"""The pure parts of the DLQ tools: time and offset options, ranges, redaction, capture lines,
which dead letters a re-drive takes. No Kafka or Redis."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from devtools.webhooks import conversation_webhook, payload, signed_envelope
from wa_worker.cli.capture import LineKind, capture_line
from wa_worker.cli.dlq import (
    DeadLetterFilter,
    DeadLetterRecord,
    _describe,
    check_classes,
    latest_per_envelope,
    latest_per_event,
    parse_ref,
    redrive_records,
)
from wa_worker.cli.redaction import KEPT_KEYS, redact_envelope
from wa_worker.cli.topic_reader import OffsetRange, clamp, parse_offset_specs
from wa_worker.core.timespec import parse_when

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
    value = shown["body"]["entry"][0]["changes"][0]["value"]
    message = value["messages"][0]
    assert message["text"] == {"body": "***(6 chars)"}  # "msg m1"
    assert message["from"] == "***(11 chars)" and message["id"] == "m1"
    assert message["timestamp"].isdigit() and message["type"] == "text"
    assert value["metadata"]["phone_number_id"] == "106540352242922"
    assert shown["body"]["entry"][0]["id"] == "102290129340398"
    assert shown["id"] == "w1" and shown["headers"]["X-Hub-Signature-256"] == "***(71 chars)"
    text = json.dumps(shown)
    assert "31612345678" not in text and "msg m1" not in text and "Kerry" not in text
    assert redact_envelope(b'{"id": "w-s3cret", "body": {}}', ("s3cret",))["id"] == "w-***"
    assert redact_envelope(b"\xff{oops") == "<6 bytes, not JSON; --show-body shows them>"
    assert redact_envelope(b'{"id": "w", "body": "not json: +31612345678"}')["body"].startswith(
        "***("
    )


class Drawn:
    """A generated webhook's values, each noted as personal or structural as it is drawn."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw
        self.personal: list[Any] = []
        self.structural: list[Any] = []

    def p(self, strategy: st.SearchStrategy[Any] | None = None) -> Any:
        value = self._draw(TEXTS if strategy is None else strategy)
        self.personal.append(value)
        return value

    def s(self, strategy: st.SearchStrategy[Any]) -> Any:
        value = self._draw(strategy)
        self.structural.append(value)
        return value

    def new_fields(self, into: dict[str, Any]) -> dict[str, Any]:
        """Fields Meta might add tomorrow: unknown names holding personal values."""
        names = self._draw(st.lists(NEW_NAMES, max_size=2, unique=True))
        for name in names:
            shape = self._draw(st.sampled_from(["text", "number", "object", "list"]))
            if shape == "text":
                into[name] = self.p()
            elif shape == "number":
                into[name] = self.p(NUMBERS)
            elif shape == "object":
                into[name] = {self._draw(NEW_NAMES): self.p()}
            else:
                into[name] = [self.p(), self.p(NUMBERS)]
        return into


TEXTS = st.text(min_size=1, max_size=12)
NUMBERS = st.integers(-(10**12), 10**12) | st.floats(-180, 180, allow_nan=False)
NEW_NAMES = st.from_regex(r"[a-z][a-z_]{2,14}", fullmatch=True).filter(lambda n: n not in KEPT_KEYS)
FORMATTED_PHONES = st.from_regex(r"\+1 \(555\) \d{3}-\d{4}", fullmatch=True)
DIGITS = st.from_regex(r"[1-9]\d{9,13}", fullmatch=True)
WAMIDS = st.from_regex(r"wamid\.[A-Za-z0-9]{8,20}", fullmatch=True)
TIMES = st.integers(1_600_000_000, 1_900_000_000).map(str)


@st.composite
def personal_webhooks(draw: st.DrawFn) -> tuple[bytes, Drawn]:
    d = Drawn(draw)
    card = {
        "name": {"formatted_name": d.p(), "first_name": d.p(), "last_name": d.p()},
        "phones": [{"phone": d.p(FORMATTED_PHONES), "wa_id": d.p(DIGITS), "type": "CELL"}],
        "org": {"company": d.p(), "department": d.p(), "title": d.p()},
        "birthday": d.p(st.dates().map(str)),
        "emails": [{"email": d.p(st.emails()), "type": "WORK"}],
        "addresses": [{"street": d.p(), "city": d.p(), "zip": d.p(), "country_code": d.p()}],
        "urls": [{"url": d.p(), "type": "HOME"}],
    }
    sender = {"from": d.p(DIGITS), "from_user_id": d.p(), "timestamp": d.s(TIMES)}
    messages = [
        {**sender, "id": d.s(WAMIDS), "type": "contacts", "contacts": [d.new_fields(card)]},
        {
            **sender,
            "id": d.s(WAMIDS),
            "type": "location",
            "location": d.new_fields(
                {
                    "latitude": d.p(st.floats(-90, 90, allow_nan=False)),
                    "longitude": d.p(st.floats(-180, 180, allow_nan=False)),
                    "name": d.p(),
                    "address": d.p(),
                }
            ),
        },
        d.new_fields(
            {
                **sender,
                "id": d.s(WAMIDS),
                "type": "text",
                "text": {"body": d.p()},
                "context": {"from": d.p(DIGITS), "id": d.s(WAMIDS)},
                "referral": {
                    "source_url": d.p(),
                    "source_id": d.p(),
                    "source_type": "ad",
                    "headline": d.p(),
                    "body": d.p(),
                    "ctwa_clid": d.p(),
                },
            }
        ),
    ]
    statuses = [
        d.new_fields(
            {
                "id": d.s(WAMIDS),
                "status": d.s(st.sampled_from(["sent", "delivered", "read", "failed"])),
                "timestamp": d.s(TIMES),
                "recipient_id": d.p(DIGITS),
                "recipient_user_id": d.p(),
                "biz_opaque_callback_data": d.p(),
                "pricing": {"billable": True, "pricing_model": "PMP", "category": "utility"},
                "errors": [
                    {
                        "code": d.s(st.integers(100, 200_000)),
                        "title": d.s(st.sampled_from(["Message undeliverable", "Rate limit"])),
                        "message": d.p(),
                        "error_data": {"details": d.p()},
                    }
                ],
            }
        )
    ]
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "1065403522"},
        "contacts": [
            {
                "profile": {"name": d.p(), "username": d.p()},
                "wa_id": d.p(DIGITS),
                "user_id": d.p(),
                "parent_user_id": d.p(),
            }
        ],
        "messages": messages,
        "statuses": statuses,
        "history": [{"threads": [{"id": d.p(DIGITS), "messages": []}]}],
    }
    body = d.new_fields(payload(d.new_fields(value)))
    d.structural += ["15550783881", "1065403522", "102290129340398", "messages"]
    d.structural += ["whatsapp_business_account", "whatsapp", "PMP", "utility"]
    d.structural += ["contacts", "location", "text"]
    raw_body = draw(st.booleans())  # the edge sends the raw JSON string (signed) or an object
    envelope = d.new_fields(
        {
            "id": d.s(st.from_regex(r"w-[a-z0-9]{1,10}", fullmatch=True)),
            "headers": {"x-forwarded-for": d.p(), "X-Hub-Signature-256": "sha256=00"},
            "body": json.dumps(body) if raw_body else body,
        }
    )
    return json.dumps(envelope).encode(), d


MASKED = re.compile(r"\*\*\*\(\d+ chars\)")


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _skeleton(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _skeleton(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_skeleton(v) for v in value]
    return None


@given(personal_webhooks())
def test_no_personal_value_survives_redaction(drawn: tuple[bytes, Drawn]) -> None:
    raw, d = drawn
    structural = set(d.structural)
    assume(not any(p in structural for p in d.personal))
    shown = redact_envelope(raw)
    # Only masks, flags and the structural values drawn are left; personal values are not.
    kept = [v for v in _leaves(shown) if not (isinstance(v, str) and MASKED.fullmatch(v))]
    assert [v for v in kept if v is not None and not isinstance(v, bool)] != []
    for leaf in kept:
        assert leaf is None or isinstance(leaf, bool) or leaf in structural, leaf
    for value in d.personal:
        # By type too: True == 1, and flags such as `billable` are kept.
        assert not [v for v in kept if type(v) is type(value) and v == value], value
    # The shape stays for the operator: every key and list, the body parsed.
    envelope = json.loads(raw)
    if isinstance(envelope["body"], str):
        envelope["body"] = json.loads(envelope["body"])
    assert _skeleton(shown) == _skeleton(envelope)


def test_capture_lines_keep_records_as_received() -> None:
    secret_signed = signed_envelope("w1", payload(), b"secret")
    # An envelope keyed by its id is the line itself: its bytes (and signature) are untouched.
    assert capture_line(secret_signed, b"w1") == (secret_signed, LineKind.ENVELOPE)
    # Anything else is a kafka_record line holding the bytes: keyed otherwise, on several lines,
    # a bare body, not JSON.
    assert capture_line(secret_signed, b"other")[1] is LineKind.RECORD
    pretty = json.dumps(json.loads(secret_signed), indent=2).encode()
    line, kind = capture_line(pretty, b"w1")
    assert kind is LineKind.RECORD and b"\n" not in line
    assert json.loads(line)["kafka_record"]["value"] == pretty.decode()
    assert capture_line(json.dumps(payload()).encode())[1] is LineKind.RECORD
    line, kind = capture_line(b"\xff not json")
    assert kind is LineKind.NOT_JSON and json.loads(line)["kafka_record"]["value_base64"]


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


def test_a_failed_publish_names_the_dead_letter_it_redrives_whatever_the_header_shape() -> None:
    assert _describe(b"k", [("wa-redrive-of", b"dlq.t/0/2")]) == "dead letter dlq.t/0/2"
    assert _describe(b"k", {"wa-redrive-of": b"dlq.t/0/2"}) == "dead letter dlq.t/0/2"
    assert _describe(b"k", [("x", None)]) == "key k"
    assert _describe(None, None) == "a record without key"


def test_a_dead_letter_records_context_comes_from_its_headers() -> None:
    letter = DeadLetterRecord(
        0, 5, None, b"", {"wa-error-class": "invalid_json", "wa-attempts": "2"}, None
    )
    assert (letter.error_class, letter.reason, letter.event_key) == ("invalid_json", "", None)
    assert letter.context.attempts == 2 and letter.context.envelope_dropped is None
    assert letter.summary()["error-class"] == "invalid_json"
