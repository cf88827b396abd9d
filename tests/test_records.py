"""`sinks.records.to_record` for each outcome, header by header, and the header contract of
`wa_worker.models.headers`: what the writer puts on a record, the reader gives back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devtools.webhooks import text_event
from wa_worker.models import headers as h
from wa_worker.models.headers import DeadLetterHeaders, ProcessedHeaders, RedriveHeaders
from wa_worker.models.records import (
    DeadLetter,
    ErrorClass,
    Processed,
    SourcePosition,
    WebhookEvent,
)
from wa_worker.sinks.records import Topics, to_record, without_envelope

WA_ID = "31612345678"
MAX = 1_048_576
TOPICS = Topics("processed", "dlq", "inbound")
RECEIVED = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)
HANDLED = RECEIVED + timedelta(milliseconds=1234.4)


def _event(
    received_at: datetime | None = RECEIVED, raw: bytes | None = b'{"id":"w-1"}'
) -> WebhookEvent:
    return text_event(
        wa_id=WA_ID,
        source=SourcePosition(topic="inbound.t", partition=2, offset=7),
        received_at=received_at,
        envelope_raw=raw,
    )


def test_a_processed_record_carries_its_event_and_its_headers_in_order() -> None:
    outcome = Processed(event=_event(), result={"ok": True}, attempts=3, handled_at=HANDLED)
    record = to_record(outcome, TOPICS, MAX)
    assert record.headers == [
        ("wa-event-key", b"wamid.1"),
        ("wa-webhook-id", b"w-1"),
        ("wa-event-kind", b"message"),
        ("wa-attempts", b"3"),
        ("wa-latency-ms", b"1234"),
    ]
    assert (record.topic, record.key, record.done) == (
        "processed",
        f"106540352242922:{WA_ID}".encode(),
        ("wamid.1", "processed"),
    )
    assert (record.error_class, record.kind, record.unwritable is not None) == (
        None,
        "message",
        True,
    )
    value = json.loads(record.value)
    assert (value["result"], value["attempts"], value["retries"]) == ({"ok": True}, 3, 2)
    assert ProcessedHeaders.from_headers(record.headers) == ProcessedHeaders(
        "wamid.1", "w-1", "message", 3, 1234
    )


# The processed record's value, byte for byte as the worker has always written it: the handler
# result and `handled_at` (isoformat: `+00:00`, never `Z`; the event's `received_at` is
# pydantic's `Z`) go in where the braces are.
PROCESSED_VALUE = (
    '{"event_key":"wamid.1","webhook_id":"w-1","kind":"message",'
    '"conversation_key":"106540352242922:31612345678","event":{"event_key":"wamid.1",'
    '"conversation_key":"106540352242922:31612345678","kind":"message","webhook_id":"w-1",'
    '"field":"messages","object":"whatsapp_business_account","entry_id":"102290129340398",'
    '"entry_time":null,"phone_number_id":null,"wa_id":null,"user_id":null,"payload":'
    '{"from":"31612345678","id":"wamid.1","timestamp":"1796115599","type":"text",'
    '"text":{"body":"hello"}},"value_context":{},"received_at":"2026-12-01T09:00:00Z",'
    '"coerced":[],"observe_only":false,"stale":false,"identity_change":null,'
    '"current_status":null,"superseded":false},"result":{result},"attempts":3,"retries":2,'
    '"handled_at":"{handled_at}","handler_latency_ms":2.1,"event_time":1796115599,'
    '"event_age_s":2.234,"stale":false,"current_status":null,"superseded":false,'
    '"skipped":null}'
)


@pytest.mark.parametrize(
    ("handled_at", "result", "text"),
    [
        (HANDLED, {"ok": True}, ('{"ok":true}', "2026-12-01T09:00:01.234400+00:00")),
        (
            HANDLED.astimezone(timezone(timedelta(hours=2))),
            {"ok": True},
            ('{"ok":true}', "2026-12-01T11:00:01.234400+02:00"),
        ),
        # Beyond 64 bits: orjson refuses it and the stdlib writes the record, `handled_at` too.
        (HANDLED, {"big": 2**70}, ('{"big":1180591620717411303424}', HANDLED.isoformat())),
    ],
    ids=["utc", "offset", "stdlib-encoder"],
)
def test_a_processed_records_value_is_byte_for_byte_the_documented_one(
    handled_at: datetime, result: object, text: tuple[str, str]
) -> None:
    event = _event()
    sent_at = event.model_copy(update={"payload": {**event.payload, "timestamp": "1796115599"}})
    outcome = Processed(
        event=sent_at, result=result, attempts=3, handled_at=handled_at, handler_latency_s=0.0021
    )
    expected = PROCESSED_VALUE.replace("{result}", text[0]).replace("{handled_at}", text[1])
    assert to_record(outcome, TOPICS, MAX).value.decode() == expected


def test_a_processed_record_without_a_receive_time_has_an_empty_latency() -> None:
    outcome = Processed(event=_event(received_at=None), attempts=1, handled_at=HANDLED)
    record = to_record(outcome, TOPICS, MAX)
    assert record.headers[-1] == ("wa-latency-ms", b"")
    assert ProcessedHeaders.from_headers(record.headers).latency_ms is None


def test_a_dead_letter_carries_the_envelope_and_the_whole_error_context() -> None:
    letter = DeadLetter(
        error_class=ErrorClass.HANDLER_PERMANENT,
        reason="handler answered HTTP 422: Unknown customer",
        webhook_id="w-1",
        event_key="wamid.1",
        conversation_key="c",
        attempts=1,
        first_failure_at=RECEIVED,
        last_failure_at=HANDLED,
        source=SourcePosition(topic="inbound.t", partition=2, offset=7),
        status_code=422,
        event=_event(),
    )
    record = to_record(letter, TOPICS, MAX)
    assert record.headers == [
        ("wa-error-class", b"handler_permanent"),
        ("wa-error-reason", b"handler answered HTTP 422: Unknown customer"),
        ("wa-webhook-id", b"w-1"),
        ("wa-event-key", b"wamid.1"),
        ("wa-attempts", b"1"),
        ("wa-first-failure-at", b"2026-12-01T09:00:00+00:00"),
        ("wa-last-failure-at", b"2026-12-01T09:00:01.234400+00:00"),
        ("wa-source-topic", b"inbound.t"),
        ("wa-source-partition", b"2"),
        ("wa-source-offset", b"7"),
        ("wa-status-code", b"422"),
    ]
    assert (record.topic, record.key, record.value) == ("dlq", b"wamid.1", b'{"id":"w-1"}')
    assert (record.done, record.error_class) == (("wamid.1", "dlq"), "handler_permanent")
    assert record.log_context() == {
        "error_class": "handler_permanent",
        "error_reason": "handler answered HTTP 422: Unknown customer",
        "webhook_id": "w-1",
        "event_key": "wamid.1",
        "attempts": "1",
        "source_partition": "2",
        "source_offset": "7",
    }
    context = DeadLetterHeaders.from_headers(record.headers)
    assert (context.first_failure_at, context.last_failure_at) == (RECEIVED, HANDLED)
    assert (context.status_code, context.envelope_rebuilt, context.envelope_dropped) == (
        422,
        False,
        None,
    )


def test_a_dead_letter_without_source_or_event_names_the_inbound_topic() -> None:
    letter = DeadLetter(
        error_class=ErrorClass.INVALID_JSON,
        reason="Expecting value",
        first_failure_at=RECEIVED,
        last_failure_at=RECEIVED,
        original=b"not json",
    )
    record = to_record(letter, TOPICS, MAX)
    assert [k for k, _ in record.headers] == [
        "wa-error-class",
        "wa-error-reason",
        "wa-attempts",
        "wa-first-failure-at",
        "wa-last-failure-at",
        "wa-source-topic",
    ]
    assert dict(record.headers)["wa-source-topic"] == b"inbound"
    assert dict(record.headers)["wa-attempts"] == b"0"
    assert (record.key, record.value, record.done) == (None, b"not json", None)


def test_a_rebuilt_envelope_is_marked() -> None:
    letter = DeadLetter(
        error_class=ErrorClass.RETRIES_EXHAUSTED,
        reason="HTTP 500",
        event_key="wamid.1",
        attempts=4,
        event=_event(raw=None),
    )
    record = to_record(letter, TOPICS, MAX)
    assert record.headers[-1] == ("wa-envelope-rebuilt", b"true")
    assert DeadLetterHeaders.from_headers(record.headers).envelope_rebuilt
    assert json.loads(record.value)["id"] == "w-1"  # the single-event envelope


def test_a_result_that_is_not_json_is_a_result_unwritable_dead_letter() -> None:
    outcome = Processed(event=_event(), result={(1, 2): "x"}, attempts=2, handled_at=HANDLED)
    record = to_record(outcome, TOPICS, MAX)
    context = DeadLetterHeaders.from_headers(record.headers)
    assert (record.topic, record.error_class, record.done) == (
        "dlq",
        "result_unwritable",
        ("wamid.1", "dlq"),
    )
    assert context.error_reason.startswith("handler result is not JSON: TypeError")
    assert (context.attempts, context.source_topic, context.source_offset) == (2, "inbound.t", 7)
    assert context.first_failure_at == context.last_failure_at == HANDLED
    assert record.value == b'{"id":"w-1"}'


def test_a_result_over_the_limit_is_a_result_unwritable_dead_letter() -> None:
    outcome = Processed(event=_event(), result="r" * MAX, attempts=1, handled_at=HANDLED)
    record = to_record(outcome, TOPICS, MAX)
    reason = DeadLetterHeaders.from_headers(record.headers).error_reason
    assert record.error_class == "result_unwritable"
    assert reason.endswith(f"bytes is over KAFKA_MAX_MESSAGE_BYTES ({MAX})")


def test_a_refused_processed_record_becomes_its_events_dead_letter() -> None:
    outcome = Processed(event=_event(), result="fine", attempts=1, handled_at=HANDLED)
    record = to_record(outcome, TOPICS, MAX)
    assert record.unwritable is not None
    letter = record.unwritable("Kafka refused the processed record: too large")
    assert (letter.topic, letter.error_class, letter.done) == (
        "dlq",
        "result_unwritable",
        ("wamid.1", "dlq"),
    )
    assert dict(letter.headers)["wa-error-reason"] == (
        b"Kafka refused the processed record: too large"
    )


def test_a_dead_letter_over_the_limit_keeps_its_headers_and_says_why_it_has_no_value() -> None:
    letter = DeadLetter(
        error_class=ErrorClass.INVALID_JSON, reason="not JSON", original=b"x" * (MAX + 1)
    )
    record = to_record(letter, TOPICS, MAX)
    assert record.value == b""
    name, why = record.headers[-1]
    assert name == "wa-envelope-dropped" and why.endswith(b"over KAFKA_MAX_MESSAGE_BYTES (1048576)")
    context = DeadLetterHeaders.from_headers(record.headers)
    assert (context.error_class, context.error_reason) == ("invalid_json", "not JSON")
    assert context.envelope_dropped == why.decode()
    again = without_envelope(to_record(letter, TOPICS, 2 * MAX), "Kafka refused the dead letter")
    assert again.headers[:-1] == record.headers[:-1] and again.value == b""


def test_the_reader_is_tolerant() -> None:
    raw: list[tuple[str, bytes | str | None]] = [
        ("wa-error-class", b"invalid_json"),
        ("wa-attempts", b"three"),
        ("wa-first-failure-at", b"yesterday"),
        ("wa-source-partition", None),
        ("wa-error-reason", b"bad \xff byte"),
        ("x-unknown", b"ignored"),
    ]
    context = DeadLetterHeaders.from_headers(raw)
    assert context == DeadLetterHeaders(
        error_class="invalid_json", error_reason="bad \ufffd byte", attempts=None
    )
    assert DeadLetterHeaders.from_headers(None) == DeadLetterHeaders("", "")
    assert DeadLetterHeaders.from_headers({"wa-event-key": "k"}).event_key == "k"
    assert ProcessedHeaders.from_headers([]) == ProcessedHeaders("", "", "", 0, None)
    assert RedriveHeaders.from_headers(raw) is None
    assert h.normalise({"a": None, "b": "é"}) == (("a", b""), ("b", "é".encode()))


def test_redrive_headers_round_trip() -> None:
    redrive = RedriveHeaders("dlq.t/0/2", "2026-11-29T12:00:00.000+00:00")
    assert redrive.to_headers() == [
        ("wa-redrive-of", b"dlq.t/0/2"),
        ("wa-redrive-at", b"2026-11-29T12:00:00.000+00:00"),
    ]
    assert RedriveHeaders.from_headers(redrive.to_headers()) == redrive


# Text a header can carry: any string UTF-8 can encode (no lone surrogates).
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
COUNT = st.integers(min_value=0, max_value=2**31)
TIME = st.datetimes(timezones=st.just(UTC))


@given(
    st.builds(
        DeadLetterHeaders,
        error_class=TEXT,
        error_reason=TEXT,
        webhook_id=st.none() | TEXT,
        event_key=st.none() | TEXT,
        attempts=st.none() | COUNT,
        first_failure_at=st.none() | TIME,
        last_failure_at=st.none() | TIME,
        source_topic=st.none() | TEXT,
        source_partition=st.none() | COUNT,
        source_offset=st.none() | COUNT,
        status_code=st.none() | st.integers(100, 599),
        envelope_rebuilt=st.booleans(),
        envelope_dropped=st.none() | TEXT,
    )
)
def test_dead_letter_headers_round_trip(context: DeadLetterHeaders) -> None:
    assert DeadLetterHeaders.from_headers(context.to_headers()) == context


@given(st.builds(ProcessedHeaders, TEXT, TEXT, TEXT, COUNT, st.none() | COUNT))
def test_processed_headers_round_trip(context: ProcessedHeaders) -> None:
    assert ProcessedHeaders.from_headers(context.to_headers()) == context


def test_a_handled_outcome_equals_the_validated_one() -> None:
    import pickle

    from pydantic import ValidationError

    event = _event()
    built = Processed.handled(event, {"ok": True}, 2, HANDLED, 0.25)
    want = Processed(
        event=event, result={"ok": True}, attempts=2, handled_at=HANDLED, handler_latency_s=0.25
    )
    assert built == want
    assert list(built.__dict__) == list(want.__dict__)
    assert built.model_fields_set == want.model_fields_set
    assert pickle.loads(pickle.dumps(built)) == want
    assert built.retries == 1
    with pytest.raises(ValidationError):
        built.attempts = 3
