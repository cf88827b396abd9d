"""The parse step's fast path (msgspec decoding and checks, wa_worker/models/webhook_structs.py)
gives exactly what the pydantic path gives: the same events, the same dead letters with the
same reasons, for any input. The reference is `parse_record` with the fast path switched off
(`json.loads` and the pydantic models alone, as before msgspec). Pure: no services.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bench.workload import generate
from devtools.webhooks import envelope, messages_value, payload, status, text_message
from tests.test_parse_properties import (
    SECRET,
    SOURCE,
    bodies_st,
    envelopes,
    json_values,
    mutated_bodies,
    secrets,
)
from wa_worker.models import webhook
from wa_worker.models import webhook_structs as fast
from wa_worker.models.records import (
    DeadLetter,
    Envelope,
    ErrorClass,
    EventKind,
    EventMaker,
    WebhookEvent,
)
from wa_worker.operators import parse
from wa_worker.operators.parse import parse_record

WA = "16315551181"
RECEIVED = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def pydantic_only() -> Iterator[None]:
    with (
        mock.patch.object(parse, "_decode", lambda text: (json.loads(text), False)),
        mock.patch.object(fast, "checked", lambda data, kind: None),
    ):
        yield


def outcome(item: WebhookEvent | DeadLetter) -> dict[str, Any]:
    if isinstance(item, WebhookEvent):
        return {"event": item.model_dump()}
    return {"dead": item.model_dump(exclude={"first_failure_at", "last_failure_at"})}


def same_both_ways(raw: bytes | None, app_secret: bytes | None = None) -> list[Any]:
    got = [outcome(i) for i in parse_record(raw, SOURCE, app_secret, 1_700_000_000_000)]
    with pydantic_only():
        want = [outcome(i) for i in parse_record(raw, SOURCE, app_secret, 1_700_000_000_000)]
    assert repr(got) == repr(want)  # repr: NaN != NaN, and dict order counts
    return got


@EXAMPLES
@given(envelopes(bodies_st), secrets)
def test_whatsapp_shaped_envelopes_parse_the_same(raw: bytes, app_secret: bytes | None) -> None:
    same_both_ways(raw, app_secret)


@EXAMPLES
@given(mutated_bodies(), st.booleans())
def test_mutated_valid_payloads_parse_the_same(body: Any, as_string: bool) -> None:
    same_both_ways(envelope("w", json.dumps(body) if as_string else body))


@EXAMPLES
@given(envelopes(json_values))
def test_random_bodies_parse_the_same(raw: bytes) -> None:
    same_both_ways(raw)


@EXAMPLES
@given(st.binary(max_size=512))
def test_random_bytes_parse_the_same(raw: bytes) -> None:
    same_both_ways(raw)


def _message_body(message: dict[str, Any], **entry: Any) -> dict[str, Any]:
    body = payload(messages_value([message], wa_id=WA))
    body["entry"][0].update(entry)
    return body


def _raw(body: Any, **fields: Any) -> bytes:
    return json.dumps({"id": "w1", "headers": {}, "body": body, **fields}).encode()


MESSAGE = text_message("wamid.1", WA, "Hello")
STATUS_BODY = payload(messages_value(statuses=[status("wamid.2", WA, "read")]))

# Where msgspec and pydantic read JSON differently: the fast path must hand these to pydantic
# (or to json.loads) and give what it gave.
EDGES: dict[str, bytes] = {
    # types pydantic's lax mode converts and msgspec refuses
    "entry time as digits": _raw(_message_body(MESSAGE, time="1700000000")),
    "entry time as a float": _raw(_message_body(MESSAGE, time=1700000000.0)),
    "entry time as a bool": _raw(_message_body(MESSAGE, time=True)),
    "entry time too big for int64": _raw(_message_body(MESSAGE, time=2**70)),
    "voice flag as a string": _raw(
        _message_body({**MESSAGE, "type": "audio", "audio": {"voice": "true"}})
    ),
    # `from_` is the field's own name, which the models accept too (populate_by_name)
    "from_ instead of from": _raw(
        _message_body({k: v for k, v in MESSAGE.items() if k != "from"} | {"from_": "x"})
    ),
    "context.from_ not a string": _raw(_message_body({**MESSAGE, "context": {"from_": 5}})),
    # wrong types and missing fields: dead letters whose reasons pydantic words
    "message id a number": _raw(_message_body({**MESSAGE, "id": 5})),
    "message without id": _raw(_message_body({k: v for k, v in MESSAGE.items() if k != "id"})),
    "status without status": _raw(
        payload(messages_value(statuses=[{"id": "wamid.3", "recipient_id": WA}]))
    ),
    "metadata phone number id a number": _raw(
        payload(messages_value([MESSAGE], wa_id=WA, phone_number_id=106540352242922))  # type: ignore[arg-type]
    ),
    "timestamp a number": _raw(
        _message_body({**MESSAGE, "timestamp": 1700000000}),
    ),
    "extra fields everywhere": _raw(
        _message_body({**MESSAGE, "new": {"deep": [1, 2.5, None]}}, extra_entry_field=[1]),
        extra_envelope_field={"x": 1},
    ),
    "headers null": _raw(STATUS_BODY, headers=None),
    "id empty": json.dumps({"id": "", "body": STATUS_BODY}).encode(),
    "body a list": _raw([STATUS_BODY]),
    "entry a string with a lone surrogate": _raw(
        {"object": "whatsapp_business_account", "entry": "\ud800"}
    ),
    "key with a lone surrogate": _raw({**STATUS_BODY, "\udcff": 1}),
    # pydantic refuses a lone surrogate in a string field, msgspec does not
    "webhook id a lone surrogate": b'{"id": "\\ud800", "body": "null"}',
    "change field a lone surrogate": _raw(
        payload({"event": "APPROVED"}, field="\ud800"),
    ),
    "wamid a lone surrogate": _raw(_message_body({**MESSAGE, "id": "\ud800"})),
    "body string holding a lone surrogate": _raw(
        json.dumps(_message_body({**MESSAGE, "from": "\udfff"}))
    ),
    # envelope timestamps: pydantic reads many forms, the rest gives the receive time
    "timestamp naive": _raw(STATUS_BODY, timestamp="2026-01-01T10:00:00"),
    "timestamp with offset": _raw(STATUS_BODY, timestamp="2026-01-01T10:00:00+02:00"),
    "timestamp a unix number": _raw(STATUS_BODY, timestamp=1767225600),
    "timestamp a date": _raw(STATUS_BODY, timestamp="2026-01-01"),
    "timestamp garbage": _raw(STATUS_BODY, timestamp="yesterday"),
    # JSON that json.loads reads and msgspec does not, or reads otherwise
    "NaN and Infinity": _raw(_message_body({**MESSAGE, "nan": float("nan"), "inf": -float("inf")})),
    "huge int in a payload": _raw(_message_body({**MESSAGE, "n": 10**40})),
    "int past 4300 digits": _raw(_message_body(MESSAGE)).replace(
        b'"type"', b'"n": ' + b"9" * 5000 + b', "type"', 1
    ),
    "float out of range": _raw(_message_body(MESSAGE)).replace(
        b'"type"', b'"f": 2e+308, "type"', 1
    ),
    "invalid UTF-8": _raw(_message_body(MESSAGE)).replace(b"Hello", b"He\xffllo", 1),
    "UTF-8 encoded surrogate": _raw(_message_body(MESSAGE)).replace(b"Hello", b"\xed\xa0\x80", 1),
    "lone surrogate escape": _raw(_message_body({**MESSAGE, "s": "\ud800"})),
    "byte order mark": b"\xef\xbb\xbf" + _raw(STATUS_BODY),
    "UTF-16": _raw(STATUS_BODY).decode().encode("utf-16"),
    "duplicate keys": _raw(STATUS_BODY).replace(b'{"id": "w1"', b'{"id": "w0", "id": "w1"', 1),
    "trailing garbage": _raw(STATUS_BODY) + b"x",
    "body string not JSON": _raw("{not json"),
    "body string with NaN": _raw(json.dumps(_message_body({**MESSAGE, "nan": float("nan")}))),
}


@pytest.mark.parametrize("name", list(EDGES))
def test_edges_parse_the_same(name: str) -> None:
    same_both_ways(EDGES[name])
    same_both_ways(EDGES[name], SECRET)


def test_edges_are_what_they_say() -> None:
    """A few outcomes pinned, so the edges above test what they name."""

    def one(name: str) -> WebhookEvent | DeadLetter:
        (item,) = parse_record(EDGES[name], SOURCE)
        return item

    event = one("entry time as digits")
    assert isinstance(event, WebhookEvent) and event.entry_time == 1700000000
    event = one("from_ instead of from")
    assert isinstance(event, WebhookEvent) and event.wa_id == "x"
    event = one("huge int in a payload")
    assert isinstance(event, WebhookEvent) and event.payload["n"] == 10**40
    event = one("NaN and Infinity")
    assert isinstance(event, WebhookEvent) and event.payload["inf"] == float("-inf")
    for name, starts in (
        ("invalid UTF-8", "envelope is not JSON: 'utf-8' codec can't decode byte 0xff"),
        ("int past 4300 digits", "envelope is not JSON: Exceeds the limit (4300 digits)"),
        ("trailing garbage", "envelope is not JSON: Extra data: line 1"),
    ):
        letter = one(name)
        assert isinstance(letter, DeadLetter) and letter.error_class is ErrorClass.INVALID_JSON
        assert letter.reason.startswith(starts), letter.reason
    letter = one("message id a number")
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "invalid message: messages.0.id: Input should be a valid string"


def test_valid_webhooks_build_no_pydantic_webhook_models() -> None:
    """The fast path is taken: valid bench webhooks never reach the pydantic models (whose
    construction was a sixth of the worker's CPU)."""
    refuse = mock.Mock(side_effect=AssertionError("pydantic validation on the hot path"))
    records = [r.value for shape in ("base", "mixed") for r in generate(200, shape).records]
    with (
        mock.patch.object(Envelope, "model_validate", refuse),
        mock.patch.object(webhook.WebhookPayload, "model_validate", refuse),
        mock.patch.object(webhook.Value, "model_validate", refuse),
        mock.patch.object(WebhookEvent, "__init__", refuse),
    ):
        for raw in records:
            out = parse_record(raw, SOURCE)
            assert out and all(isinstance(item, WebhookEvent) for item in out), out


EVENT_FIELDS: dict[str, Any] = {
    "event_key": "wamid.1",
    "conversation_key": "106540352242922:16315551181",
    "kind": EventKind.MESSAGE,
    "webhook_id": "w1",
    "field": "messages",
    "object": "whatsapp_business_account",
    "entry_id": "102290129340398",
    "entry_time": 1700000000,
    "phone_number_id": "106540352242922",
    "wa_id": WA,
    "payload": MESSAGE,
    "value_context": {"metadata": {"phone_number_id": "106540352242922"}},
    "envelope_headers": {"content-type": "application/json"},
    "received_at": RECEIVED,
    "source": SOURCE,
    "envelope_raw": b"{}",
}


@pytest.mark.parametrize(
    "fields",
    [
        EVENT_FIELDS,
        {k: v for k, v in EVENT_FIELDS.items() if k not in ("value_context", "envelope_headers")},
        {**EVENT_FIELDS, "observe_only": True, "coerced": ("received_at",)},
    ],
    ids=["all", "defaults", "flags"],
)
def test_parsed_events_equal_validated_ones(fields: dict[str, Any]) -> None:
    built, validated = WebhookEvent.parsed(**fields), WebhookEvent(**fields)
    assert built == validated
    assert list(built.__dict__) == list(validated.__dict__)  # same order: same repr, pickles
    assert built.model_fields_set == validated.model_fields_set
    assert built.model_dump() == validated.model_dump()
    assert built.for_handler() == validated.for_handler()
    assert pickle.loads(pickle.dumps(built)) == validated
    assert built.model_copy(update={"stale": True}) == validated.model_copy(update={"stale": True})
    with pytest.raises(ValidationError):
        built.stale = True  # frozen like any event


_OWN = ("event_key", "conversation_key", "kind", "wa_id", "user_id", "payload")


@pytest.mark.parametrize(
    "fields",
    [
        {**EVENT_FIELDS, "user_id": None},
        {**EVENT_FIELDS, "user_id": "US.1", "observe_only": True},
        {k: v for k, v in EVENT_FIELDS.items() if k not in ("value_context", "envelope_headers")}
        | {"user_id": None},
    ],
    ids=["messages", "standby", "defaults"],
)
def test_events_made_from_a_prototype_equal_validated_ones(fields: dict[str, Any]) -> None:
    shared = {k: v for k, v in fields.items() if k not in _OWN}
    made = EventMaker(shared)
    for built, want in (
        (made.person(*(fields[k] for k in _OWN)), WebhookEvent(**fields)),
        (
            made.other("error:1", "106540352242922:-", EventKind.ERROR, {"code": 1}),
            WebhookEvent(
                **shared,
                event_key="error:1",
                conversation_key="106540352242922:-",
                kind=EventKind.ERROR,
                payload={"code": 1},
            ),
        ),
    ):
        assert built == want
        assert list(built.__dict__) == list(want.__dict__)
        assert built.model_fields_set == want.model_fields_set
        assert built.model_dump() == want.model_dump()
        assert pickle.loads(pickle.dumps(built)) == want
        assert built.model_copy(update={"stale": True}) == want.model_copy(update={"stale": True})
        with pytest.raises(ValidationError):
            built.stale = True
    one, two = made.person(*(fields[k] for k in _OWN)), made.person(*(fields[k] for k in _OWN))
    assert one.model_fields_set is not two.model_fields_set
    if "value_context" not in shared:  # a default made per event, never shared
        assert one.value_context == {} and one.value_context is not two.value_context


@pytest.mark.parametrize(
    "update",
    [{"current_status": "read"}, {"current_status": "read", "superseded": True}, {}],
)
def test_a_changed_event_equals_its_model_copy(update: dict[str, Any]) -> None:
    event = WebhookEvent(**EVENT_FIELDS)
    built, want = event.changed(**update), event.model_copy(update=update)
    assert built == want and built is not event
    assert list(built.__dict__) == list(want.__dict__)
    assert built.model_fields_set == want.model_fields_set
    assert event.model_fields_set == set(EVENT_FIELDS)  # the original is left as it was
    assert pickle.loads(pickle.dumps(built)) == want
    with pytest.raises(ValidationError):
        built.stale = True


def test_parsed_events_get_defaults_of_their_own() -> None:
    fields = {k: v for k, v in EVENT_FIELDS.items() if k != "value_context"}
    one, two = WebhookEvent.parsed(**fields), WebhookEvent.parsed(**fields)
    assert one.value_context == {} and one.value_context is not two.value_context


def test_the_parse_cost_script_agrees_with_a_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    """bench.parse_cost checks that both revisions give the same outcomes before timing them."""
    from bench import parse_cost

    parse_cost.main(["--records", "40", "--rounds", "1", "--baseline", "HEAD"])
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[2:]] == [
        *parse_cost.SHAPES,
        "base-signed",
    ]
