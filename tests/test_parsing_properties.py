"""No input crashes the parser: property tests with hypothesis."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.parse import parse_record
from tests.support.webhooks import envelope, messages_value, payload, text_message
from wa_worker.models.records import DeadLetter, WebhookEvent

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "body",
                    "object",
                    "entry",
                    "changes",
                    "value",
                    "messages",
                    "statuses",
                    "metadata",
                    "from",
                    "type",
                    "errors",
                    "headers",
                    "x",
                ]
            )
            | st.text(max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=25,
)


def _check(raw: bytes | None) -> None:
    out = parse_record(raw, None)
    assert out and all(isinstance(item, WebhookEvent | DeadLetter) for item in out)
    for item in out:
        if isinstance(item, DeadLetter):
            assert item.original == (raw or b"") and item.reason


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_random_json(value: Any) -> None:
    _check(json.dumps(value).encode())


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_random_bodies_in_envelopes(body: Any) -> None:
    _check(envelope("w", body if isinstance(body, dict | str) else {"x": body}))


def _valid() -> dict[str, Any]:
    return payload(messages_value(messages=[text_message("wamid.1", "3161")], wa_id="3161"))


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    tree = _valid()
    node: Any = tree
    for _ in range(draw(st.integers(1, 8))):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        if isinstance(node[key], dict | list) and node[key] and draw(st.booleans()):
            node = node[key]
            continue
        node[key] = draw(json_values)
        break
    return tree


@settings(max_examples=400, deadline=None)
@given(mutated())
def test_mutated_valid_payloads(body: dict[str, Any]) -> None:
    _check(envelope("w", body))
    _check(envelope("w", json.dumps(body)))


def test_deep_nesting_and_huge_strings() -> None:
    for depth in (10_000, 200_000):
        _check(("[" * depth + "]" * depth).encode())
        _check(('{"a":' * depth + "1" + "}" * depth).encode())
        _check(b'{"id": "w", "headers": {}, "body": ' + b"[" * depth + b"]" * depth + b"}")
    body = _valid()
    body["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "x" * 5_000_000
    _check(envelope("w", body))
