"""Parsing WhatsApp Cloud API webhooks into events: every message type, statuses, errors,
other fields, signatures, and bad input. Pure: no services."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from operators.parse import parse_record
from tests.support.webhooks import envelope, messages_value, payload, signed_envelope, status
from wa_worker.models.records import DeadLetter, ErrorClass, EventKind, SourcePosition, WebhookEvent

WA = "16315551181"
PN = "106540352242922"
SOURCE = SourcePosition(topic="in", partition=2, offset=41)

MESSAGES: dict[str, dict[str, Any]] = {
    "text": {"text": {"body": "hello", "preview_url": False}},
    "image": {"image": {"id": "m1", "mime_type": "image/jpeg", "sha256": "abc", "caption": "c"}},
    "audio": {"audio": {"id": "m2", "mime_type": "audio/ogg; codecs=opus", "voice": True}},
    "video": {"video": {"id": "m3", "mime_type": "video/mp4"}},
    "document": {"document": {"id": "m4", "filename": "a.pdf", "mime_type": "application/pdf"}},
    "sticker": {"sticker": {"id": "m5", "mime_type": "image/webp", "animated": False}},
    "location": {"location": {"latitude": 52.37, "longitude": 4.89, "name": "Dam"}},
    "contacts": {
        "contacts": [
            {"name": {"formatted_name": "A B"}, "phones": [{"phone": "+1 555", "type": "CELL"}]}
        ]
    },
    "interactive": {
        "interactive": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}}
    },
    "button": {"button": {"payload": "STOP", "text": "Stop promotions"}},
    "reaction": {"reaction": {"message_id": "wamid.orig", "emoji": "👍"}},
    "order": {
        "order": {
            "catalog_id": "c1",
            "product_items": [
                {"product_retailer_id": "sku", "quantity": 2, "item_price": 9.5, "currency": "EUR"}
            ],
        }
    },
    "system": {
        "system": {
            "body": "changed number",
            "type": "user_changed_number",
            "new_wa_id": "16315550000",
        }
    },
    "unsupported": {
        "errors": [
            {
                "code": 131051,
                "title": "Message type unknown",
                "error_data": {"details": "not supported"},
            }
        ]
    },
}


def _message(kind: str, wamid: str, **extra: Any) -> dict[str, Any]:
    return {
        "from": WA,
        "id": wamid,
        "timestamp": "1700000000",
        "type": kind,
        **MESSAGES.get(kind, {}),
        **extra,
    }


def _events(raw: bytes, secret: bytes | None = None) -> list[WebhookEvent]:
    out = parse_record(raw, SOURCE, secret)
    assert all(isinstance(e, WebhookEvent) for e in out), out
    return out  # type: ignore[return-value]


def _dead(raw: bytes | None, secret: bytes | None = None) -> DeadLetter:
    out = parse_record(raw, SOURCE, secret)
    assert len(out) == 1 and isinstance(out[0], DeadLetter), out
    return out[0]


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_every_message_type_becomes_one_event(kind: str) -> None:
    message = _message(kind, f"wamid.{kind}")
    (event,) = _events(envelope("w1", payload(messages_value(messages=[message], wa_id=WA))))
    assert event.kind is EventKind.MESSAGE and event.event_key == f"wamid.{kind}"
    assert event.conversation_key == f"{PN}:{WA}" and event.wa_id == WA
    assert event.payload == message  # passed on as received
    assert event.webhook_id == "w1" and event.source == SOURCE
    assert event.value_context["metadata"]["phone_number_id"] == PN


def test_list_reply_and_context() -> None:
    message = _message(
        "interactive",
        "wamid.l",
        interactive={
            "type": "list_reply",
            "list_reply": {"id": "r1", "title": "Row", "description": "d"},
        },
        context={"from": PN, "id": "wamid.prev"},
    )
    (event,) = _events(envelope("w", payload(messages_value(messages=[message]))))
    assert event.payload["interactive"]["list_reply"]["id"] == "r1"
    assert event.payload["context"]["id"] == "wamid.prev"


def test_unknown_type_and_new_fields_are_kept() -> None:
    message = _message("hologram", "wamid.new", hologram={"frames": 3}, brand_new_field=[1, 2])
    value = messages_value(messages=[message], wa_id=WA)
    value["surprise"] = {"x": 1}
    (event,) = _events(envelope("w", payload(value)))
    assert event.payload["type"] == "hologram" and event.payload["hologram"] == {"frames": 3}
    assert event.payload["brand_new_field"] == [1, 2]
    assert event.value_context["surprise"] == {"x": 1}


def test_username_users_key_on_from_user_id() -> None:
    message = {"id": "wamid.u", "from_user_id": "US.123", "type": "text", "text": {"body": "x"}}
    (event,) = _events(envelope("w", payload(messages_value(messages=[message]))))
    assert event.conversation_key == f"{PN}:US.123"


@pytest.mark.parametrize("state", ["sent", "delivered", "read", "failed"])
def test_statuses(state: str) -> None:
    item = status("wamid.out", WA, state)
    if state == "failed":
        item["errors"] = [{"code": 131026, "title": "Message undeliverable"}]
    (event,) = _events(envelope("w", payload(messages_value(statuses=[item]))))
    assert event.kind is EventKind.STATUS and event.event_key == f"wamid.out:{state}"
    assert event.conversation_key == f"{PN}:{WA}"
    assert event.payload["pricing"]["category"] == "service"


def test_status_for_a_username_recipient() -> None:
    item = {"id": "wamid.s", "status": "read", "recipient_user_id": "US.9"}
    (event,) = _events(envelope("w", payload(messages_value(statuses=[item]))))
    assert event.conversation_key == f"{PN}:US.9"


def test_value_level_errors_have_stable_content_keys() -> None:
    def key(error: dict[str, Any]) -> str:
        (event,) = _events(envelope("w", payload(messages_value(errors=[error]))))
        assert event.kind is EventKind.ERROR
        return event.event_key

    a = {"code": 131047, "title": "Re-engagement message"}
    assert key(a) == key(dict(a)) and key(a).startswith("error:")
    assert key(a) != key({"code": 131048, "title": "Spam rate limit"})


@pytest.mark.parametrize(
    "field", ["account_update", "message_template_status_update", "phone_number_quality_update"]
)
def test_other_fields_pass_on_as_changes(field: str) -> None:
    value = {"event": "APPROVED", "message_template_id": 1, "reason": None}
    (event,) = _events(envelope("w", payload(value, field=field)))
    assert event.kind is EventKind.CHANGE and event.field == field and event.payload == value


def test_one_webhook_splits_into_every_update_in_order() -> None:
    body = payload(
        messages_value(
            messages=[_message("text", "wamid.1"), _message("image", "wamid.2")],
            statuses=[status("wamid.0", WA, "read")],
            wa_id=WA,
        ),
        messages_value(messages=[_message("text", "wamid.3")], phone_number_id="999"),
    )
    body["entry"].append(
        {
            "id": "other-waba",
            "changes": [{"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}],
        }
    )
    events = _events(envelope("w9", body))
    assert [e.kind.value for e in events] == ["message", "message", "status", "message", "change"]
    assert [e.event_key for e in events][:4] == ["wamid.1", "wamid.2", "wamid.0:read", "wamid.3"]
    assert events[3].conversation_key == f"999:{WA}"
    assert all(e.webhook_id == "w9" and e.received_at is not None for e in events)


def test_raw_string_body_parses_like_an_object() -> None:
    body = payload(messages_value(messages=[_message("text", "wamid.s")], wa_id=WA))
    as_object = _events(envelope("w", body))
    as_string = _events(envelope("w", json.dumps(body)))
    assert [e.event_key for e in as_string] == [e.event_key for e in as_object]


SECRET = b"app-secret"


def test_signature_checked_on_raw_bodies() -> None:
    body = payload(messages_value(messages=[_message("text", "wamid.sig")], wa_id=WA))
    (event,) = _events(signed_envelope("w", body, SECRET), SECRET)
    assert event.event_key == "wamid.sig"
    raw = json.dumps(body)
    good = "sha256=" + hmac.new(SECRET, raw.encode(), hashlib.sha256).hexdigest()
    assert _events(envelope("w", raw, {"x-hub-signature-256": good}), SECRET)  # any case
    for headers in (
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {},
        {"X-Hub-Signature-256": good.removeprefix("sha256=")},
        {"X-Hub-Signature-256": good.replace("sha256=", "sha1=")},
    ):
        letter = _dead(envelope("w", raw, headers), SECRET)
        assert letter.error_class is ErrorClass.BAD_SIGNATURE, headers
    tampered = envelope("w", raw.replace("wamid.sig", "wamid.evil"), {"X-Hub-Signature-256": good})
    assert _dead(tampered, SECRET).error_class is ErrorClass.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("raw", "error_class"),
    [
        (b"", ErrorClass.INVALID_ENVELOPE),
        (None, ErrorClass.INVALID_ENVELOPE),
        (b"not json", ErrorClass.INVALID_JSON),
        (b"[1, 2]", ErrorClass.INVALID_ENVELOPE),
        (b'{"headers": {}, "body": {}}', ErrorClass.INVALID_ENVELOPE),
        (b'{"id": "w"}', ErrorClass.INVALID_ENVELOPE),
        (b'{"id": "w", "body": "{not json"}', ErrorClass.INVALID_JSON),
        (
            envelope("w", {"object": "page", "entry": [{"id": "1", "changes": []}]}),
            ErrorClass.INVALID_PAYLOAD,
        ),
        (
            envelope("w", {"object": "whatsapp_business_account", "entry": {"id": "1"}}),
            ErrorClass.INVALID_PAYLOAD,
        ),
        (
            envelope(
                "w",
                payload(
                    {
                        "metadata": {"phone_number_id": PN},
                        "messages": [{"from": WA, "type": "text"}],
                    }
                ),
            ),
            ErrorClass.INVALID_PAYLOAD,
        ),
        (
            envelope(
                "w",
                payload(
                    {
                        "metadata": {"phone_number_id": PN},
                        "messages": [{"id": ["x"], "type": "text"}],
                    }
                ),
            ),
            ErrorClass.INVALID_PAYLOAD,
        ),
        (
            envelope(
                "w",
                payload(
                    {"metadata": {"display_phone_number": "1"}, "messages": [{"id": "wamid.x"}]}
                ),
            ),
            ErrorClass.INVALID_PAYLOAD,
        ),
        (
            envelope(
                "w", {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": []}]}
            ),
            ErrorClass.INVALID_PAYLOAD,
        ),
    ],
)
def test_bad_input_is_one_dead_letter_with_a_reason(
    raw: bytes | None, error_class: ErrorClass
) -> None:
    letter = _dead(raw)
    assert letter.error_class is error_class
    assert letter.reason and letter.original == (raw or b"")
    assert letter.source == SOURCE


def test_a_rebuilt_single_event_envelope_parses_back() -> None:
    body = payload(
        messages_value(
            messages=[_message("text", "wamid.a"), _message("text", "wamid.b")], wa_id=WA
        )
    )
    _, second = _events(envelope("w", body))
    (again,) = _events(json.dumps(second.single_event_envelope()).encode())
    assert again.event_key == "wamid.b" and again.conversation_key == second.conversation_key
    assert again.payload == second.payload
