"""Property tests: no input crashes `operators.parse.parse_record`.

Whatever the bytes, the parser returns a non-empty list of WebhookEvent / DeadLetter. A dead
letter carries the input bytes untouched (b"" for None), or for a bad part of a large webhook an
envelope rebuilt around that part, which fails the same way again; a bad part never takes its
valid siblings with it.
Pure: no services. Kept well under ~30 s in total.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from devtools.webhooks import envelope, messages_value, payload, status, text_message
from wa_worker.core import jsonbytes
from wa_worker.models.records import (
    ENVELOPE_CARRY_LIMIT,
    DeadLetter,
    ErrorClass,
    EventKind,
    SourcePosition,
    WebhookEvent,
)
from wa_worker.operators.parse import parse_record

SOURCE = SourcePosition(topic="whatsapp.inbound", partition=0, offset=7)
SECRET = b"property-test-app-secret"
PARSE_CLASSES = {
    ErrorClass.INVALID_JSON,
    ErrorClass.INVALID_ENVELOPE,
    ErrorClass.INVALID_PAYLOAD,
    ErrorClass.BAD_SIGNATURE,
}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(raw: bytes | None, app_secret: bytes | None = None) -> list[WebhookEvent | DeadLetter]:
    """The parser's contract, for any input."""
    out = parse_record(raw, SOURCE, app_secret)  # must not raise
    assert isinstance(out, list)
    assert out, "parse_record returned an empty list"
    for item in out:
        assert isinstance(item, WebhookEvent | DeadLetter), type(item)
    dead = [item for item in out if isinstance(item, DeadLetter)]
    for dl in dead:
        assert dl.error_class in PARSE_CLASSES
        assert dl.reason and len(dl.reason) <= 2000
        assert not dl.reason.startswith("unparseable input"), dl.reason  # no parser bug hit
        assert dl.source == SOURCE
        assert dl.event is None
        if dl.is_rebuilt():
            assert raw is not None and len(raw) > ENVELOPE_CARRY_LIMIT
            assert dl.original is not None
            (again,) = parse_record(dl.original, SOURCE)  # re-driven, it fails the same way
            assert isinstance(again, DeadLetter)
            assert (again.event_key, again.error_class) == (dl.event_key, dl.error_class)
        else:
            assert dl.original == (raw if raw is not None else b"")
    if len(out) > 1 and dead:  # dead letters of parts, beside other parts
        for dl in dead:
            assert dl.error_class is ErrorClass.INVALID_PAYLOAD
            assert dl.reason.startswith("invalid ") and dl.webhook_id, dl.reason
    for item in out:
        if isinstance(item, WebhookEvent):
            assert item.event_key
            assert item.conversation_key
            assert item.webhook_id
            assert item.source == SOURCE
            assert isinstance(item.payload, dict)
            # for_handler is built by hand for speed: it must say what pydantic would (pydantic
            # itself gives up on nesting deeper than its limit; for_handler must not)
            pickle.dumps(item)  # recovery snapshots and worker exchange pickle events
            sent = jsonbytes.dumps(item.for_handler())
            assert json.loads(sent)["event_key"] == item.event_key
            try:
                exclude = {"envelope_raw", "envelope_headers", "source"}
                exclude |= {"traceparent", "tracestate"}  # HTTP headers, not the JSON
                reference = item.model_dump(mode="json", exclude=exclude)
            except ValueError:
                continue
            assert sent == jsonbytes.dumps(reference)
    return out


def summary(out: list[WebhookEvent | DeadLetter]) -> list[tuple[str, str, str]]:
    return [
        (item.kind.value, item.event_key, item.conversation_key)
        if isinstance(item, WebhookEvent)
        else ("dead", item.error_class.value, "")
        for item in out
    ]


def sign(raw_body: str, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, raw_body.encode(), hashlib.sha256).hexdigest()


# -- strategies --------------------------------------------------------------------------------

WA_KEYS = [
    "id",
    "headers",
    "body",
    "timestamp",
    "object",
    "entry",
    "time",
    "changes",
    "field",
    "value",
    "messaging_product",
    "metadata",
    "phone_number_id",
    "display_phone_number",
    "contacts",
    "wa_id",
    "user_id",
    "profile",
    "messages",
    "statuses",
    "errors",
    "from",
    "from_",
    "from_user_id",
    "type",
    "text",
    "image",
    "location",
    "latitude",
    "interactive",
    "button_reply",
    "order",
    "product_items",
    "status",
    "recipient_id",
    "recipient_user_id",
    "conversation",
    "pricing",
    "code",
    "error_data",
    "X-Hub-Signature-256",
]

lone_surrogates = st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3
)
texts = st.one_of(st.text(max_size=20), st.text(max_size=20), lone_surrogates)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    st.sampled_from(["", "whatsapp_business_account", "messages", "sha256=", "1700000000"]),
)
keys = st.one_of(st.sampled_from(WA_KEYS), st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=30,
)
json_objects = st.dictionaries(keys, json_values, max_size=6)


def shaped(strategy: st.SearchStrategy[Any], odds: int = 12) -> st.SearchStrategy[Any]:
    """Mostly the right shape (shrinks towards it), about one time in `odds` any JSON at all."""

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        if draw(st.integers(0, odds - 1)) == odds - 1:
            return draw(json_values)
        return draw(strategy)

    return pick()


ids = shaped(st.text(min_size=1, max_size=24))
opt_text = shaped(st.text(max_size=12))

media = shaped(
    st.fixed_dictionaries(
        {},
        optional={
            "id": opt_text,
            "mime_type": st.sampled_from(["image/jpeg", "audio/ogg; codecs=opus"]),
            "sha256": opt_text,
            "caption": opt_text,
            "voice": shaped(st.booleans()),
            "animated": shaped(st.booleans()),
        },
    )
)
messages_st = st.fixed_dictionaries(
    {"id": ids},
    optional={
        "from": opt_text,
        "from_user_id": opt_text,
        "timestamp": shaped(st.just("1700000000")),
        "type": shaped(
            st.sampled_from(
                ["text", "image", "audio", "location", "interactive", "order", "system", "zap"]
            )
        ),
        "text": shaped(st.fixed_dictionaries({"body": st.text(max_size=30)})),
        "image": media,
        "audio": media,
        "location": shaped(
            st.fixed_dictionaries(
                {"latitude": shaped(st.floats()), "longitude": shaped(st.floats())}
            )
        ),
        "interactive": shaped(
            st.fixed_dictionaries(
                {"type": shaped(st.sampled_from(["button_reply", "list_reply"]))},
                optional={"button_reply": shaped(st.fixed_dictionaries({"id": ids}))},
            )
        ),
        "order": shaped(
            st.fixed_dictionaries(
                {"product_items": shaped(st.lists(json_objects, max_size=3))},
                optional={"catalog_id": opt_text},
            )
        ),
        "context": shaped(st.fixed_dictionaries({"from": opt_text, "id": opt_text})),
        "errors": shaped(st.lists(json_objects, max_size=2)),
        "brand_new_field": json_values,
    },
)
statuses_st = st.fixed_dictionaries(
    {"id": ids, "status": shaped(st.sampled_from(["sent", "delivered", "read", "failed"]))},
    optional={
        "recipient_id": opt_text,
        "recipient_user_id": opt_text,
        "timestamp": opt_text,
        "conversation": shaped(json_objects),
        "pricing": shaped(json_objects),
        "errors": shaped(st.lists(json_objects, max_size=2)),
    },
)
errors_st = shaped(
    st.fixed_dictionaries(
        {"code": shaped(st.integers())},
        optional={"title": opt_text, "message": opt_text, "error_data": json_values},
    )
)
VALUE_PARTS: dict[str, st.SearchStrategy[Any]] = {
    "messaging_product": shaped(st.just("whatsapp")),
    "metadata": shaped(
        st.fixed_dictionaries(
            {"phone_number_id": shaped(st.text(max_size=15))},
            optional={"display_phone_number": opt_text},
        )
    ),
    "contacts": shaped(
        st.lists(
            shaped(st.fixed_dictionaries({}, optional={"wa_id": opt_text, "user_id": opt_text})),
            max_size=2,
        )
    ),
    "messages": shaped(st.lists(shaped(messages_st), min_size=1, max_size=3)),
    "statuses": shaped(st.lists(shaped(statuses_st), min_size=1, max_size=3)),
    "errors": shaped(st.lists(errors_st, min_size=1, max_size=2)),
}


def _value_with(*required: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {name: VALUE_PARTS[name] for name in ("metadata", *required)},
        optional={k: v for k, v in VALUE_PARTS.items() if k not in required and k != "metadata"},
    )


values_st = st.one_of(
    _value_with("messages", "contacts"),
    _value_with("statuses"),
    _value_with("errors"),
    _value_with(),
)
changes_st = st.fixed_dictionaries(
    {
        "field": shaped(
            st.sampled_from(["messages", "account_update", "message_template_status_update", ""])
        ),
        "value": shaped(values_st),
    }
)
entries_st = st.fixed_dictionaries(
    {"id": ids, "changes": shaped(st.lists(shaped(changes_st), min_size=1, max_size=3))},
    optional={"time": shaped(st.integers(min_value=0, max_value=2**40))},
)
bodies_st = shaped(
    st.fixed_dictionaries(
        {
            "object": shaped(st.sampled_from(["whatsapp_business_account"] * 8 + ["page", ""])),
            "entry": shaped(st.lists(shaped(entries_st), min_size=1, max_size=3)),
        }
    )
)
headers_st = shaped(
    st.dictionaries(
        st.sampled_from(["X-Hub-Signature-256", "x-hub-signature-256", "content-type"])
        | st.text(max_size=10),
        st.one_of(st.text(max_size=80), st.lists(st.text(max_size=80), max_size=2), json_values),
        max_size=4,
    )
)
timestamps = shaped(
    st.one_of(
        st.datetimes().map(datetime.isoformat),
        st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
        st.integers(min_value=0, max_value=2**33),
    )
)


@st.composite
def envelopes(draw: st.DrawFn, bodies: st.SearchStrategy[Any]) -> bytes:
    env: dict[str, Any] = {}
    if draw(st.integers(0, 19)) < 19:
        env["id"] = draw(ids)
    if draw(st.booleans()):
        env["headers"] = draw(headers_st)
    if draw(st.integers(0, 19)) < 19:
        body = draw(bodies)
        as_string = draw(st.booleans())
        env["body"] = json.dumps(body) if as_string else body
    if draw(st.booleans()):
        env["timestamp"] = draw(timestamps)
    if draw(st.integers(0, 4)) == 0:
        env[draw(st.text(max_size=6))] = draw(json_values)
    return json.dumps(env).encode()


secrets = st.one_of(st.none(), st.none(), st.just(SECRET), st.binary(min_size=1, max_size=40))


# -- random bytes and random JSON --------------------------------------------------------------


@FAST
@given(st.binary(max_size=4096), secrets)
def test_random_bytes(raw: bytes, app_secret: bytes | None) -> None:
    check(raw, app_secret)


@FAST
@given(st.data())
def test_truncated_and_spliced_valid_envelopes(data: st.DataObject) -> None:
    good = envelope("w", payload(messages_value([text_message("wamid.1", "3161")], wa_id="3161")))
    cut = data.draw(st.integers(0, len(good)))
    junk = data.draw(st.binary(max_size=40))
    tail = data.draw(st.integers(0, len(good)))
    check(good[:cut] + junk + good[tail:])


@FAST
@given(json_values, secrets)
def test_random_json_values(value: Any, app_secret: bytes | None) -> None:
    check(json.dumps(value).encode(), app_secret)
    check(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"), app_secret)


@FAST
@given(json_objects)
def test_random_json_objects(value: dict[str, Any]) -> None:
    out = check(json.dumps(value).encode())
    if "id" not in value or "body" not in value:
        assert isinstance(out[0], DeadLetter)


def test_none_and_empty_inputs() -> None:
    for raw in (None, b"", b" ", b"\x00", b"{}", b"[]", b"null"):
        for app_secret in (None, SECRET):
            out = check(raw, app_secret)
            assert isinstance(out[0], DeadLetter)


# -- random envelopes with random (and WhatsApp-shaped) bodies ---------------------------------


@FAST
@given(envelopes(json_values), secrets)
def test_random_envelopes_with_random_bodies(raw: bytes, app_secret: bytes | None) -> None:
    check(raw, app_secret)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes(bodies_st), secrets)
def test_random_envelopes_with_whatsapp_shaped_bodies(raw: bytes, app_secret: bytes | None) -> None:
    check(raw, app_secret)


@FAST
@given(bodies_st, headers_st)
def test_signed_bodies_parse_as_if_unsigned(body: Any, headers: Any) -> None:
    raw_body = json.dumps(body)
    headers = dict(headers) if isinstance(headers, dict) else {}
    headers = {k: v for k, v in headers.items() if k.lower() != "x-hub-signature-256"}
    headers["X-Hub-Signature-256"] = sign(raw_body)
    raw = envelope("w", raw_body, headers)
    signed = check(raw, SECRET)
    assert summary(signed) == summary(check(raw, None))


@FAST
@given(st.one_of(st.text(max_size=100), st.lists(st.text(max_size=100), max_size=2)))
def test_random_signature_headers_are_bad_signatures(header: Any) -> None:
    raw_body = json.dumps(payload(messages_value([text_message("wamid.1", "3161")])))
    raw = envelope("w", raw_body, {"X-Hub-Signature-256": header})
    out = check(raw, SECRET)
    assert len(out) == 1 and isinstance(out[0], DeadLetter)
    assert out[0].error_class is ErrorClass.BAD_SIGNATURE


# -- generated valid webhooks split exactly -----------------------------------------------------


@st.composite
def valid_webhooks(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """A valid webhook with random ids/texts, and the (kind, key, conversation) expected."""
    names = st.text(min_size=1, max_size=16)
    entries: list[dict[str, Any]] = []
    expected: list[tuple[str, str, str]] = []
    for _ in range(draw(st.integers(1, 3))):
        waba = draw(names)
        changes: list[dict[str, Any]] = []
        for _ in range(draw(st.integers(1, 3))):
            what = draw(st.sampled_from(["messages", "statuses", "change"]))
            pn = draw(names)
            if what == "change":
                field = draw(st.sampled_from(["account_update", "security", "flows"]))
                changes.append({"field": field, "value": draw(json_objects)})
                expected.append(("change", f"change:{field}:", f"{waba}:{field}"))
            elif what == "messages":
                wa = draw(names)
                msgs = [
                    text_message(draw(names), wa, draw(st.text(max_size=30)))
                    for _ in range(draw(st.integers(1, 3)))
                ]
                value = messages_value(messages=msgs, wa_id=wa, phone_number_id=pn)
                changes.append({"field": "messages", "value": value})
                expected += [("message", m["id"], f"{pn}:{wa}") for m in msgs]
            else:
                wa = draw(names)
                states = draw(st.lists(st.sampled_from(["sent", "delivered", "read"]), min_size=1))
                sts = [status(draw(names), wa, s) for s in states]
                value = messages_value(statuses=sts, phone_number_id=pn)
                changes.append({"field": "messages", "value": value})
                expected += [("status", f"{s['id']}:{s['status']}", f"{pn}:{wa}") for s in sts]
        entries.append({"id": waba, "time": 1700000000, "changes": changes})
    return {"object": "whatsapp_business_account", "entry": entries}, expected


@FAST
@given(valid_webhooks(), st.booleans(), st.booleans())
def test_generated_valid_webhooks_split_exactly(
    generated: tuple[dict[str, Any], list[tuple[str, str, str]]], as_string: bool, signed: bool
) -> None:
    body, expected = generated
    raw_body = json.dumps(body)
    headers = {"x-hub-signature-256": sign(raw_body)} if signed else None
    raw = envelope("webhook-1", raw_body if as_string else body, headers)
    out = check(raw, SECRET if signed and as_string else None)
    assert all(isinstance(item, WebhookEvent) for item in out), out
    got = summary(out)
    assert len(got) == len(expected)
    for (kind, key, conv), (want_kind, want_key, want_conv) in zip(got, expected, strict=True):
        assert kind == want_kind
        assert conv == want_conv
        if kind == EventKind.CHANGE.value:
            assert key.startswith(want_key)
        else:
            assert key == want_key


@st.composite
def one_item_corrupted(
    draw: st.DrawFn,
) -> tuple[dict[str, Any], list[tuple[str, str, str]], int, str | None]:
    """A generated valid webhook with one message or status broken, the index of that item
    among the expected events, and the key its dead letter must have (None: no usable id)."""
    body, expected = draw(valid_webhooks())
    items = [
        (item, kind)
        for entry in body["entry"]
        for change in entry["changes"]
        if change["field"] == "messages"
        for kind, name in (("message", "messages"), ("status", "statuses"))
        for item in change["value"].get(name, [])
    ]
    assume(items)
    index = draw(st.integers(0, len(items) - 1))
    item, kind = items[index]
    position = [i for i, e in enumerate(expected) if e[0] in ("message", "status")][index]
    how = draw(st.sampled_from(["id", "field"]))
    if how == "id":
        item["id"] = draw(st.one_of(st.just(""), st.integers(), st.dictionaries(keys, scalars)))
        return body, expected, position, None
    if kind == "message":
        item["text"] = draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(scalars)))
    else:
        item["errors"] = draw(st.one_of(st.integers(), st.text(max_size=5)))
    return body, expected, position, expected[position][1]


@FAST
@given(one_item_corrupted(), st.booleans())
def test_one_corrupted_item_leaves_its_siblings_alone(
    case: tuple[dict[str, Any], list[tuple[str, str, str]], int, str | None], as_string: bool
) -> None:
    body, expected, position, key = case
    out = check(envelope("webhook-1", json.dumps(body) if as_string else body))
    dead = [item for item in out if isinstance(item, DeadLetter)]
    assert len(dead) == 1 and dead[0].event_key == key
    got = [s for s in summary(out) if s[0] != "dead"]
    want = expected[:position] + expected[position + 1 :]
    assert len(got) == len(want)
    for (kind, key_got, conv), (want_kind, want_key, want_conv) in zip(got, want, strict=True):
        assert (kind, conv) == (want_kind, want_conv)
        assert key_got.startswith(want_key) if kind == "change" else key_got == want_key


@FAST
@given(
    st.lists(st.tuples(st.integers(0, 2**40), st.booleans()), min_size=1, max_size=5),
    st.one_of(st.none(), st.integers(1, 10**15)),
)
def test_numbers_for_digits_are_coerced_and_keys_kept(
    stamps: list[tuple[int, bool]], phone_number_id: int | None
) -> None:
    messages = [text_message(f"wamid.{i}", "3161") for i in range(len(stamps))]
    for message, (stamp, numeric) in zip(messages, stamps, strict=True):
        message["timestamp"] = stamp if numeric else str(stamp)
    pn = str(phone_number_id) if phone_number_id is not None else "106540352242922"
    value = messages_value(messages, statuses=[status("wamid.out", "3161")], wa_id="3161")
    value["metadata"]["phone_number_id"] = phone_number_id if phone_number_id is not None else pn
    out = check(envelope("w", payload(value)))
    assert all(isinstance(item, WebhookEvent) for item in out)
    events = [item for item in out if isinstance(item, WebhookEvent)]
    assert [e.event_key for e in events] == [m["id"] for m in messages] + ["wamid.out:delivered"]
    shared = ("value_context.metadata.phone_number_id",) if phone_number_id is not None else ()
    for event, (stamp, numeric) in zip(events, stamps, strict=False):
        assert event.payload["timestamp"] == str(stamp)
        assert event.coerced == shared + (("payload.timestamp",) if numeric else ())
        assert event.conversation_key == f"{pn}:3161"
    assert events[-1].coerced == shared


# -- mutated valid payloads --------------------------------------------------------------------


def _valid_bodies() -> list[dict[str, Any]]:
    wa, pn = "16315551181", "106540352242922"
    image = {
        "from": wa,
        "id": "wamid.image",
        "timestamp": "1700000000",
        "type": "image",
        "image": {"id": "1003383421387256", "mime_type": "image/jpeg", "sha256": "abc="},
    }
    order = {
        "from": wa,
        "id": "wamid.order",
        "timestamp": "1700000000",
        "type": "order",
        "order": {
            "catalog_id": "1420365038543432",
            "product_items": [
                {"product_retailer_id": "SKU", "quantity": 2, "item_price": 9.5, "currency": "USD"}
            ],
        },
    }
    reply = {
        "from": wa,
        "id": "wamid.reply",
        "timestamp": "1700000000",
        "type": "interactive",
        "context": {"from": "15550783881", "id": "wamid.question"},
        "interactive": {"type": "list_reply", "list_reply": {"id": "r1", "title": "Row 1"}},
    }
    failed = {
        **status("wamid.out", wa, "failed"),
        "errors": [{"code": 131047, "title": "Re-engagement message"}],
    }
    error = {"code": 131000, "title": "Something went wrong", "error_data": {"details": "x"}}
    return [
        payload(messages_value([text_message("wamid.1", wa), image, order, reply], wa_id=wa)),
        payload(messages_value(statuses=[status("wamid.2", wa, "sent"), failed])),
        payload(messages_value(errors=[error], phone_number_id=pn)),
        payload(
            {"event": "APPROVED", "message_template_id": 1, "reason": "NONE"},
            field="message_template_status_update",
        ),
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "1",
                    "time": 1700000000,
                    "changes": [
                        {"field": "messages", "value": messages_value([text_message("a", wa)])},
                        {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}},
                    ],
                },
                {
                    "id": "2",
                    "changes": [
                        {"field": "messages", "value": messages_value(statuses=[status("b", wa)])}
                    ],
                },
            ],
        },
    ]


VALID_BODIES = _valid_bodies()


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            out += _paths(child, (*prefix, index))
    return out


@st.composite
def mutated_bodies(draw: st.DrawFn) -> Any:
    tree: Any = copy.deepcopy(draw(st.sampled_from(VALID_BODIES)))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(tree)[::-1]))  # the root last: rarely picked
        op = draw(st.sampled_from(["replace", "replace", "delete", "insert"]))
        if not path:
            if op == "replace":
                tree = draw(json_values)
            continue
        parent = tree
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if op == "replace":
            parent[last] = draw(json_values)
        elif op == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(json_values)
        else:
            parent.insert(last, draw(json_values))
    return tree


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_bodies())
def test_mutated_valid_payloads(body: Any) -> None:
    raw_body = json.dumps(body)
    as_object = check(envelope("w", body)) if isinstance(body, dict) else None
    as_string = check(envelope("w", raw_body))
    signed = check(envelope("w", raw_body, {"X-Hub-Signature-256": sign(raw_body)}), SECRET)
    assert summary(signed) == summary(as_string)
    if as_object is not None:
        assert summary(as_object) == summary(as_string)
    forged = check(envelope("w", raw_body, {"X-Hub-Signature-256": sign(raw_body + "x")}), SECRET)
    assert [d.error_class for d in forged if isinstance(d, DeadLetter)] == [
        ErrorClass.BAD_SIGNATURE
    ]


def test_unmutated_valid_payloads_give_only_events() -> None:
    for body in VALID_BODIES:
        out = check(envelope("w", body))
        assert all(isinstance(item, WebhookEvent) for item in out)


# -- deep nesting ------------------------------------------------------------------------------

ENVELOPE_HEAD = b'{"id": "w", "headers": {}, "body": '
PAYLOAD_HEAD = b'{"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": ['


def _nested_list(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _nested_dict(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _nested_mixed(depth: int) -> bytes:
    return b'{"a":[' * depth + b"null" + b"]}" * depth


def _in_message(nested: bytes) -> bytes:
    return (
        ENVELOPE_HEAD
        + PAYLOAD_HEAD
        + b'{"field": "messages", "value": {"metadata": {"phone_number_id": "1"}, '
        + b'"messages": [{"id": "wamid.1", "from": "2", "type": "text", "deep": '
        + nested
        + b"}]}}]}]}}"
    )


def _in_change(nested: bytes) -> bytes:
    return ENVELOPE_HEAD + PAYLOAD_HEAD + b'{"field": "x", "value": {"v": ' + nested + b"}}]}]}}"


def _in_header(nested: bytes) -> bytes:
    return b'{"id": "w", "body": {}, "headers": {"X-Hub-Signature-256": ' + nested + b"}}"


def _as_body_string(nested: bytes) -> bytes:
    return ENVELOPE_HEAD + json.dumps(nested.decode()).encode() + b"}"


SHAPES = {"list": _nested_list, "dict": _nested_dict, "mixed": _nested_mixed}
PLACES = {
    "whole_record": lambda nested: nested,
    "body_object": lambda nested: ENVELOPE_HEAD + nested + b"}",
    "body_string": _as_body_string,
    "message_field": _in_message,
    "change_value": _in_change,
    "header": _in_header,
    "unclosed": lambda nested: nested[: len(nested) // 2],
}


@pytest.mark.parametrize("depth", [200, 900, 5000, 100_000])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("place", sorted(PLACES))
def test_deeply_nested_json(place: str, shape: str, depth: int) -> None:
    raw = PLACES[place](SHAPES[shape](depth))
    check(raw)
    if place in ("body_string", "header"):
        check(raw, SECRET)


# -- huge inputs -------------------------------------------------------------------------------

MB = 1024 * 1024


def _huge_text_message() -> bytes:
    message = text_message("wamid.huge", "3161", "x" * (4 * MB))
    return envelope("w", payload(messages_value([message], wa_id="3161")))


def test_huge_valid_message_is_one_event() -> None:
    out = check(_huge_text_message())
    assert len(out) == 1 and isinstance(out[0], WebhookEvent)
    assert len(out[0].payload["text"]["body"]) == 4 * MB
    assert out[0].envelope_raw is None  # too big to ride along


def test_huge_signed_body_is_verified() -> None:
    raw_body = json.dumps(
        payload(messages_value([text_message("wamid.huge", "3161", "é" * (2 * MB))]))
    )
    out = check(envelope("w", raw_body, {"X-Hub-Signature-256": sign(raw_body)}), SECRET)
    assert isinstance(out[0], WebhookEvent)
    out = check(envelope("w", raw_body, {"X-Hub-Signature-256": sign(raw_body[1:])}), SECRET)
    assert isinstance(out[0], DeadLetter) and out[0].error_class is ErrorClass.BAD_SIGNATURE


@pytest.mark.parametrize(
    "name",
    [
        "garbage",
        "huge_id",
        "huge_header",
        "huge_body_string",
        "huge_number",
        "huge_key",
        "huge_object_name",
        "unterminated_string",
        "many_messages",
    ],
)
def test_huge_inputs(name: str) -> None:
    x = "x" * (3 * MB)
    good = payload(messages_value([text_message("wamid.1", "3161")]))
    raw = {
        "garbage": bytes(range(256)) * (3 * MB // 256),
        "huge_id": envelope(x, good),
        "huge_header": envelope("w", json.dumps(good), {"X-Hub-Signature-256": "sha256=" + x}),
        "huge_body_string": envelope("w", x),
        "huge_number": ENVELOPE_HEAD + b"9" * (3 * MB) + b"}",
        "huge_key": envelope("w", {**good, x: 1}),
        "huge_object_name": envelope("w", {**good, "object": x}),
        "unterminated_string": ENVELOPE_HEAD + b'"' + x.encode(),
        "many_messages": envelope(
            "w",
            payload(messages_value([text_message(f"wamid.{i}", "3161") for i in range(20_000)])),
        ),
    }[name]
    for app_secret in (None, SECRET):
        out = check(raw, app_secret)
        if name == "many_messages" and app_secret is None:
            assert len(out) == 20_000
