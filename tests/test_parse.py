"""Unit tests of `operators.parse.parse_record` with WhatsApp Cloud API webhook shapes.

Every message type, statuses, value-level errors, other fields, multi-update webhooks, raw-string
bodies, X-Hub-Signature-256 checks, bad input, and the rebuilt single-event envelope.
Pure: no services.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devtools.webhooks import (
    envelope,
    messages_value,
    payload,
    signed_envelope,
    text_message,
)
from wa_worker.models.records import (
    ENVELOPE_CARRY_LIMIT,
    DeadLetter,
    ErrorClass,
    EventKind,
    SourcePosition,
    WebhookEvent,
)
from wa_worker.operators.parse import AppSecret, content_hash, parse_record

WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
WA_ID = "16315551181"
USER_ID = "US.13491208655302741918"
SECRET = b"0123456789abcdef0123456789abcdef"
SOURCE = SourcePosition(topic="whatsapp.inbound", partition=3, offset=1234)
RECEIVED = datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)
WEBHOOK_ID = "whk-7f3c2a9e"


# -- payload builders (real Cloud API shapes) -------------------------------------------------


def wamid(n: int) -> str:
    return f"wamid.HBgLMTYzMTU1NTExODEVAgASGBQzQTdCNUM4RjBBRTcxNjA0OTQ4{n:04d}AA=="


def metadata(phone_number_id: str = PHONE_NUMBER_ID) -> dict[str, Any]:
    return {"display_phone_number": DISPLAY_NUMBER, "phone_number_id": phone_number_id}


def sender(wa_id: str = WA_ID, name: str = "Kerry Fisher") -> dict[str, Any]:
    return {"profile": {"name": name}, "wa_id": wa_id}


def inbound(msg_type: str, content: dict[str, Any], n: int = 1, **extra: Any) -> dict[str, Any]:
    """A message as Meta sends it: from, id, timestamp, type and the type's own object."""
    return {
        "from": WA_ID,
        "id": wamid(n),
        "timestamp": "1714566615",
        "type": msg_type,
        **content,
        **extra,
    }


def value(
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    errors: list[dict[str, Any]] | None = None,
    contacts: list[dict[str, Any]] | None = None,
    phone_number_id: str = PHONE_NUMBER_ID,
) -> dict[str, Any]:
    out: dict[str, Any] = {"messaging_product": "whatsapp", "metadata": metadata(phone_number_id)}
    if contacts is not None:
        out["contacts"] = contacts
    if messages is not None:
        out["messages"] = messages
    if statuses is not None:
        out["statuses"] = statuses
    if errors is not None:
        out["errors"] = errors
    return out


def body(
    *changes: tuple[str, dict[str, Any]], waba_id: str = WABA_ID, time: int = 1714566616
) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": waba_id,
                "time": time,
                "changes": [{"value": v, "field": field} for field, v in changes],
            }
        ],
    }


def messages_body(*messages: dict[str, Any], contacts: list[dict[str, Any]] | None = None):
    return body(("messages", value(messages=list(messages), contacts=contacts or [sender()])))


def statuses_body(*statuses: dict[str, Any]) -> dict[str, Any]:
    return body(("messages", value(statuses=list(statuses))))


def wrap(payload: dict[str, Any] | str, headers: dict[str, Any] | None = None) -> bytes:
    return envelope(WEBHOOK_ID, payload, headers, timestamp=RECEIVED)


def sign(raw_body: str, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, raw_body.encode(), hashlib.sha256).hexdigest()


def parse(
    raw: bytes | None, app_secret: AppSecret | None = None
) -> list[WebhookEvent | DeadLetter]:
    out = parse_record(raw, SOURCE, app_secret)
    assert isinstance(out, list) and out
    return out


def events(raw: bytes | None, app_secret: AppSecret | None = None) -> list[WebhookEvent]:
    out = parse(raw, app_secret)
    dead = [item for item in out if isinstance(item, DeadLetter)]
    assert not dead, dead
    return [item for item in out if isinstance(item, WebhookEvent)]


def one_event(raw: bytes | None, app_secret: AppSecret | None = None) -> WebhookEvent:
    out = events(raw, app_secret)
    assert len(out) == 1, out
    return out[0]


def dead_letter(raw: bytes | None, app_secret: bytes | None = None) -> DeadLetter:
    out = parse(raw, app_secret)
    assert len(out) == 1, out
    assert isinstance(out[0], DeadLetter), out[0]
    return out[0]


# -- messages ----------------------------------------------------------------------------------

REPLY_CONTEXT = {"from": DISPLAY_NUMBER, "id": "wamid.HBgLMTYzMTU1NTExODEVAgARGBJCOTA0QkM2NjI3"}

MESSAGE_TYPES: dict[str, dict[str, Any]] = {
    "text": inbound("text", {"text": {"body": "Hi, is my order on its way?"}}),
    "text_with_preview": inbound(
        "text", {"text": {"body": "see https://example.com/p/1", "preview_url": True}}
    ),
    "image": inbound(
        "image",
        {
            "image": {
                "caption": "the broken part",
                "mime_type": "image/jpeg",
                "sha256": "1ZrjG4D9Up2dJ0uGmJfQ8iOs3uB8oG3fZ9jG2iAW5wE=",
                "id": "1003383421387256",
            }
        },
    ),
    "audio_voice": inbound(
        "audio",
        {
            "audio": {
                "mime_type": "audio/ogg; codecs=opus",
                "sha256": "Lp0ZeN5CfxXyqfFRZ4oS/8UyzMbSNgd9tFbJL04+qfk=",
                "id": "1206585910302461",
                "voice": True,
            }
        },
    ),
    "video": inbound(
        "video",
        {
            "video": {
                "mime_type": "video/mp4",
                "sha256": "a7pVn6rUh2T4jVFaqxk9dR7Sb1h3Rr5b8xJ0y0WW3gk=",
                "id": "934822398418735",
                "caption": "unboxing",
            }
        },
    ),
    "document": inbound(
        "document",
        {
            "document": {
                "caption": "invoice",
                "filename": "INV-2024-0042.pdf",
                "mime_type": "application/pdf",
                "sha256": "2m5hO5rGv1f7lmCzQy6n4mI9wSxN9Xo2kSgh7G1nPp8=",
                "id": "776514651016211",
            }
        },
    ),
    "sticker": inbound(
        "sticker",
        {
            "sticker": {
                "mime_type": "image/webp",
                "sha256": "bXo7RCJZ3RhrHbW0OJ3mYqI4hB0jZ1OeQ6oPH8nwUGk=",
                "id": "1482307049257263",
                "animated": False,
            }
        },
    ),
    "location": inbound(
        "location",
        {
            "location": {
                "address": "1 Hacker Way, Menlo Park, CA 94025",
                "latitude": 37.483307,
                "longitude": -122.148981,
                "name": "Meta Headquarters",
                "url": "https://www.facebook.com/metahq",
            }
        },
    ),
    "contacts": inbound(
        "contacts",
        {
            "contacts": [
                {
                    "addresses": [
                        {
                            "city": "Menlo Park",
                            "country": "United States",
                            "country_code": "us",
                            "state": "CA",
                            "street": "1 Hacker Way",
                            "type": "HOME",
                            "zip": "94025",
                        }
                    ],
                    "birthday": "2012-08-18",
                    "emails": [{"email": "barbara@example.com", "type": "WORK"}],
                    "name": {
                        "formatted_name": "Barbara J. Johnson",
                        "first_name": "Barbara",
                        "last_name": "Johnson",
                        "middle_name": "Joana",
                    },
                    "org": {"company": "Example Inc.", "department": "Sales", "title": "Lead"},
                    "phones": [
                        {"phone": "+1 (940) 555-1234", "wa_id": "19405551234", "type": "HOME"},
                        {"phone": "+1 (650) 555-1234", "type": "WORK"},
                    ],
                    "urls": [{"url": "https://www.example.com", "type": "WORK"}],
                }
            ]
        },
    ),
    "interactive_button_reply": inbound(
        "interactive",
        {
            "context": REPLY_CONTEXT,
            "interactive": {
                "type": "button_reply",
                "button_reply": {"id": "confirm-order-42", "title": "Confirm"},
            },
        },
    ),
    "interactive_list_reply": inbound(
        "interactive",
        {
            "context": REPLY_CONTEXT,
            "interactive": {
                "type": "list_reply",
                "list_reply": {
                    "id": "slot-2024-05-02-10",
                    "title": "Thu 10:00",
                    "description": "Thursday morning delivery slot",
                },
            },
        },
    ),
    "button_quick_reply": inbound(
        "button",
        {
            "context": REPLY_CONTEXT,
            "button": {"payload": "STOP_PROMOTIONS", "text": "Stop promotions"},
        },
    ),
    "reaction": inbound(
        "reaction",
        {"reaction": {"message_id": REPLY_CONTEXT["id"], "emoji": "\U0001f44d"}},
    ),
    "reaction_removed": inbound("reaction", {"reaction": {"message_id": REPLY_CONTEXT["id"]}}),
    "order": inbound(
        "order",
        {
            "order": {
                "catalog_id": "1420365038543432",
                "text": "please gift-wrap",
                "product_items": [
                    {
                        "product_retailer_id": "SKU-TSHIRT-M",
                        "quantity": 2,
                        "item_price": 19.99,
                        "currency": "USD",
                    },
                    {
                        "product_retailer_id": "SKU-MUG",
                        "quantity": 1,
                        "item_price": 8.5,
                        "currency": "USD",
                    },
                ],
            }
        },
    ),
    "system_user_changed_number": inbound(
        "system",
        {
            "system": {
                "body": "Kerry Fisher changed from 16315551181 to 16315550000",
                "new_wa_id": "16315550000",
                "type": "user_changed_number",
            }
        },
    ),
    "unsupported": inbound(
        "unsupported",
        {
            "errors": [
                {
                    "code": 131051,
                    "title": "Message type unknown",
                    "message": "Message type unknown",
                    "error_data": {"details": "Message type is currently not supported."},
                }
            ]
        },
    ),
    "unknown_without_type_details": inbound(
        "unknown",
        {
            "errors": [
                {
                    "code": 131051,
                    "details": "Message type is not currently supported",
                    "title": "Unsupported message type",
                }
            ]
        },
    ),
}


@pytest.mark.parametrize("name", sorted(MESSAGE_TYPES))
def test_every_message_type_is_one_message_event(name: str) -> None:
    message = MESSAGE_TYPES[name]
    event = one_event(wrap(messages_body(message)))
    assert event.kind is EventKind.MESSAGE
    assert event.event_key == message["id"]
    assert event.conversation_key == f"{PHONE_NUMBER_ID}:{WA_ID}"
    assert event.wa_id == WA_ID
    assert event.phone_number_id == PHONE_NUMBER_ID
    assert event.field == "messages"
    assert event.object == "whatsapp_business_account"
    assert event.entry_id == WABA_ID
    assert event.webhook_id == WEBHOOK_ID
    assert event.source == SOURCE
    assert event.received_at == RECEIVED
    # The message is passed on as received, nothing added, nothing lost.
    assert event.payload == message
    assert event.payload["type"] == message["type"]
    # The rest of the value (metadata, sender contacts) travels as context.
    assert event.value_context == {
        "messaging_product": "whatsapp",
        "metadata": metadata(),
        "contacts": [sender()],
    }
    assert event.for_handler()["payload"] == message


def test_voice_flag_and_media_fields_survive() -> None:
    event = one_event(wrap(messages_body(MESSAGE_TYPES["audio_voice"])))
    assert event.payload["audio"]["voice"] is True
    assert event.payload["audio"]["mime_type"] == "audio/ogg; codecs=opus"


def test_order_product_items_survive() -> None:
    event = one_event(wrap(messages_body(MESSAGE_TYPES["order"])))
    items = event.payload["order"]["product_items"]
    assert [i["product_retailer_id"] for i in items] == ["SKU-TSHIRT-M", "SKU-MUG"]
    assert items[0]["quantity"] == 2 and items[0]["item_price"] == 19.99


def test_unsupported_message_keeps_its_errors() -> None:
    event = one_event(wrap(messages_body(MESSAGE_TYPES["unsupported"])))
    assert event.kind is EventKind.MESSAGE
    assert event.payload["errors"][0]["code"] == 131051
    assert event.payload["errors"][0]["error_data"]["details"].startswith("Message type")


def test_a_brand_new_message_type_is_kept_with_its_unknown_fields() -> None:
    message = inbound(
        "hologram",
        {
            "hologram": {
                "id": "998877665544",
                "depth_mm": 12.5,
                "layers": [{"name": "base", "opacity": 0.8}, {"name": "top", "opacity": None}],
                "interactive": False,
            },
            "hologram_meta": {"version": 3, "tags": ["beta", "x"]},
        },
    )
    event = one_event(wrap(messages_body(message)))
    assert event.kind is EventKind.MESSAGE
    assert event.event_key == message["id"]
    assert event.payload == message
    assert event.payload["type"] == "hologram"
    assert event.payload["hologram"]["layers"][1] == {"name": "top", "opacity": None}
    assert event.payload["hologram_meta"] == {"version": 3, "tags": ["beta", "x"]}


def test_unknown_fields_on_known_messages_are_kept() -> None:
    message = inbound(
        "text",
        {
            "text": {"body": "I saw your ad", "future_text_flag": "on"},
            "referral": {
                "source_url": "https://fb.me/2ZulEu42P",
                "source_id": "120211234567890123",
                "source_type": "ad",
                "headline": "Spring sale",
                "body": "Up to 50% off",
                "media_type": "image",
                "image_url": "https://scontent.xx.fbcdn.net/v/t45.1600-4/ad.jpg",
                "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4",
            },
            "a_field_nobody_knows": {"nested": [1, "two", {"three": 3.0}]},
        },
        context={"from": DISPLAY_NUMBER, "id": REPLY_CONTEXT["id"], "forwarded": True},
    )
    event = one_event(wrap(messages_body(message)))
    assert event.payload == message
    assert event.payload["text"]["future_text_flag"] == "on"
    assert event.payload["referral"]["ctwa_clid"].startswith("ARAk")
    assert event.payload["a_field_nobody_knows"] == {"nested": [1, "two", {"three": 3.0}]}
    assert event.payload["context"]["forwarded"] is True


def test_unknown_fields_on_the_value_are_kept_as_context() -> None:
    v = value(messages=[MESSAGE_TYPES["text"]], contacts=[sender()])
    v["new_value_field"] = {"x": 1}
    event = one_event(wrap(body(("messages", v))))
    assert event.value_context["new_value_field"] == {"x": 1}
    assert "messages" not in event.value_context


def test_username_users_key_on_from_user_id() -> None:
    message = {
        "from_user_id": USER_ID,
        "id": wamid(7),
        "timestamp": "1714566615",
        "type": "text",
        "text": {"body": "hi from a username"},
    }
    contacts = [{"profile": {"name": "Kerry", "username": "@kerry"}, "user_id": USER_ID}]
    event = one_event(wrap(messages_body(message, contacts=contacts)))
    assert event.kind is EventKind.MESSAGE
    assert event.conversation_key == f"{PHONE_NUMBER_ID}:{USER_ID}"
    assert (event.wa_id, event.user_id) == (None, USER_ID)  # no phone number: none given
    assert "from" not in event.payload
    assert event.payload == message


def test_from_user_id_wins_over_from() -> None:
    # One identity per customer: the BSUID keys whenever a payload has one (identity.py).
    message = {**MESSAGE_TYPES["text"], "from_user_id": USER_ID}
    event = one_event(wrap(messages_body(message)))
    assert event.conversation_key == f"{PHONE_NUMBER_ID}:{USER_ID}"
    assert (event.wa_id, event.user_id) == (WA_ID, USER_ID)


def test_a_phone_only_message_keeps_its_phone_key() -> None:
    event = one_event(wrap(messages_body(MESSAGE_TYPES["text"])))
    assert event.conversation_key == f"{PHONE_NUMBER_ID}:{WA_ID}"
    assert (event.wa_id, event.user_id) == (WA_ID, None)


def test_message_without_sender_falls_back_to_value_contact() -> None:
    message = {k: v for k, v in MESSAGE_TYPES["text"].items() if k != "from"}
    event = one_event(wrap(messages_body(message, contacts=[sender("16315559999")])))
    assert event.conversation_key == f"{PHONE_NUMBER_ID}:16315559999"


def test_message_without_any_sender_gets_a_placeholder_key() -> None:
    message = {k: v for k, v in MESSAGE_TYPES["text"].items() if k != "from"}
    v = value(messages=[message])
    event = one_event(wrap(body(("messages", v))))
    assert event.conversation_key == f"{PHONE_NUMBER_ID}:-"
    assert event.wa_id is None


def test_messages_value_without_metadata_has_no_literal_none_key() -> None:
    v = value(messages=[MESSAGE_TYPES["text"]], contacts=[sender()])
    del v["metadata"]
    out = parse(wrap(body(("messages", v))))
    for item in out:
        if isinstance(item, WebhookEvent):
            assert not item.conversation_key.startswith("None:"), item.conversation_key


# -- statuses ----------------------------------------------------------------------------------


def status(state: str, n: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "id": wamid(n),
        "status": state,
        "timestamp": "1714566700",
        "recipient_id": WA_ID,
        **extra,
    }


CONVERSATION = {
    "id": "6f3b0d5b3d2e7c1f86a2f0c0a6e4c2b1",
    "expiration_timestamp": "1714653100",
    "origin": {"type": "utility"},
}
PRICING = {"billable": True, "pricing_model": "CBP", "category": "utility"}

STATUSES: dict[str, dict[str, Any]] = {
    "sent": status("sent", conversation=CONVERSATION, pricing=PRICING),
    "delivered": status("delivered", conversation=CONVERSATION, pricing=PRICING),
    "read": status("read"),
    "failed": status(
        "failed",
        errors=[
            {
                "code": 131047,
                "title": "Re-engagement message",
                "message": "Re-engagement message",
                "error_data": {
                    "details": "Message failed to send because more than 24 hours have passed "
                    "since the customer last replied to this number."
                },
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
            }
        ],
    ),
    "delivered_new_pricing": status(
        "delivered",
        pricing={
            "billable": True,
            "pricing_model": "PMP",
            "category": "marketing",
            "type": "regular",
        },
    ),
}


@pytest.mark.parametrize("name", sorted(STATUSES))
def test_statuses_are_status_events(name: str) -> None:
    st = STATUSES[name]
    event = one_event(wrap(statuses_body(st)))
    assert event.kind is EventKind.STATUS
    assert event.event_key == f"{st['id']}:{st['status']}"
    assert event.conversation_key == f"{PHONE_NUMBER_ID}:{WA_ID}"
    assert event.wa_id == WA_ID
    assert event.phone_number_id == PHONE_NUMBER_ID
    assert event.payload == st


def test_failed_status_keeps_errors_and_pricing_fields() -> None:
    event = one_event(wrap(statuses_body(STATUSES["failed"])))
    assert event.payload["errors"][0]["code"] == 131047
    assert event.payload["errors"][0]["href"].startswith("https://developers.facebook.com")
    sent = one_event(wrap(statuses_body(STATUSES["sent"])))
    assert sent.payload["conversation"] == CONVERSATION
    assert sent.payload["pricing"] == PRICING


def test_each_state_of_one_message_has_its_own_key() -> None:
    states = ["sent", "delivered", "read"]
    out = events(wrap(statuses_body(*(status(s, n=5) for s in states))))
    assert [e.event_key for e in out] == [f"{wamid(5)}:{s}" for s in states]
    assert len({e.conversation_key for e in out}) == 1


def test_status_for_a_username_recipient() -> None:
    st = {
        "id": wamid(9),
        "status": "delivered",
        "timestamp": "1714566700",
        "recipient_user_id": USER_ID,
        "conversation": CONVERSATION,
        "pricing": PRICING,
    }
    event = one_event(wrap(statuses_body(st)))
    assert event.kind is EventKind.STATUS
    assert event.event_key == f"{wamid(9)}:delivered"
    assert event.conversation_key == f"{PHONE_NUMBER_ID}:{USER_ID}"
    assert (event.wa_id, event.user_id) == (None, USER_ID)
    assert event.payload == st


# -- value-level errors ------------------------------------------------------------------------

VALUE_ERROR = {
    "code": 131000,
    "title": "Something went wrong",
    "message": "Something went wrong",
    "error_data": {"details": "Unable to process the webhook: internal error"},
    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
}


def errors_body(*errors: dict[str, Any], phone_number_id: str = PHONE_NUMBER_ID):
    return body(("messages", value(errors=list(errors), phone_number_id=phone_number_id)))


def test_value_level_errors_are_error_events() -> None:
    event = one_event(wrap(errors_body(VALUE_ERROR)))
    assert event.kind is EventKind.ERROR
    assert event.event_key.startswith("error:")
    assert len(event.event_key) > len("error:")
    assert event.conversation_key == f"{PHONE_NUMBER_ID}:-"
    assert event.payload == VALUE_ERROR
    assert event.phone_number_id == PHONE_NUMBER_ID


def test_value_level_error_keys_are_stable_content_keys() -> None:
    key = one_event(wrap(errors_body(VALUE_ERROR))).event_key
    # Same input, and the same error redelivered in another webhook: same key.
    assert one_event(wrap(errors_body(VALUE_ERROR))).event_key == key
    again = envelope("whk-other", errors_body(VALUE_ERROR), timestamp=RECEIVED)
    assert one_event(again).event_key == key
    # Key order in the JSON does not matter.
    reordered = dict(reversed(list(VALUE_ERROR.items())))
    assert one_event(wrap(errors_body(reordered))).event_key == key
    # A different error, or the same error on another number: different key.
    other = {**VALUE_ERROR, "code": 131026, "title": "Message undeliverable"}
    assert one_event(wrap(errors_body(other))).event_key != key
    elsewhere = errors_body(VALUE_ERROR, phone_number_id="109876543210987")
    assert one_event(wrap(elsewhere)).event_key != key
    details = {**VALUE_ERROR, "error_data": {"details": "another detail"}}
    assert one_event(wrap(errors_body(details))).event_key != key


def test_two_different_value_errors_are_two_events() -> None:
    other = {**VALUE_ERROR, "code": 130429, "title": "Rate limit hit"}
    out = events(wrap(errors_body(VALUE_ERROR, other)))
    assert [e.kind for e in out] == [EventKind.ERROR, EventKind.ERROR]
    assert out[0].event_key != out[1].event_key
    assert [e.payload["code"] for e in out] == [131000, 130429]


# -- other fields ------------------------------------------------------------------------------

OTHER_FIELDS: dict[str, dict[str, Any]] = {
    "account_update": {
        "phone_number": DISPLAY_NUMBER,
        "event": "VERIFIED_ACCOUNT",
    },
    "message_template_status_update": {
        "event": "APPROVED",
        "message_template_id": 594425479261596,
        "message_template_name": "order_confirmation",
        "message_template_language": "en_US",
        "reason": "NONE",
    },
    "phone_number_quality_update": {
        "display_phone_number": DISPLAY_NUMBER,
        "event": "DOWNGRADE",
        "current_limit": "TIER_1K",
    },
}


@pytest.mark.parametrize("field", sorted(OTHER_FIELDS))
def test_other_fields_are_change_events(field: str) -> None:
    v = OTHER_FIELDS[field]
    out = parse(wrap(body((field, v))))
    assert len(out) == 1
    event = out[0]
    assert isinstance(event, WebhookEvent)
    assert event.kind is EventKind.CHANGE
    assert event.field == field
    assert event.payload == v
    assert event.event_key.startswith(f"change:{field}:")
    assert event.conversation_key == f"{WABA_ID}:{field}"
    assert event.entry_id == WABA_ID
    assert event.phone_number_id is None
    assert event.webhook_id == WEBHOOK_ID
    # Stable: same change, same key; another change, another key.
    assert one_event(wrap(body((field, v)))).event_key == event.event_key
    changed = {**v, "event": "SOMETHING_ELSE"}
    assert one_event(wrap(body((field, changed)))).event_key != event.event_key


def test_unknown_field_with_odd_value_is_a_change_not_a_dead_letter() -> None:
    v = {"whatever": [1, {"deep": None}], "phone_number_id": 42}
    event = one_event(wrap(body(("brand_new_field", v))))
    assert event.kind is EventKind.CHANGE
    assert event.payload == v


def test_messages_value_with_nothing_to_split_is_passed_on_as_a_change() -> None:
    v = value(contacts=[sender()])
    event = one_event(wrap(body(("messages", v))))
    assert event.kind is EventKind.CHANGE
    assert event.field == "messages"
    assert event.payload == v


# -- several updates in one webhook ------------------------------------------------------------


def test_one_webhook_splits_into_one_event_per_update_in_order() -> None:
    other_pn = "109876543210987"
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "time": 1714566616,
                "changes": [
                    {
                        "field": "messages",
                        "value": value(
                            messages=[
                                MESSAGE_TYPES["text"],
                                {**MESSAGE_TYPES["image"], "id": wamid(2)},
                                {**MESSAGE_TYPES["reaction"], "id": wamid(3)},
                            ],
                            contacts=[sender()],
                        ),
                    },
                    {"field": "messages", "value": value(statuses=[status("sent", n=10)])},
                    {"field": "account_update", "value": OTHER_FIELDS["account_update"]},
                    {
                        "field": "messages",
                        "value": value(
                            statuses=[status("delivered", n=10), status("read", n=10)],
                        ),
                    },
                ],
            },
            {
                "id": "209876543210000",
                "time": 1714566617,
                "changes": [
                    {
                        "field": "messages",
                        "value": value(
                            errors=[VALUE_ERROR],
                            phone_number_id=other_pn,
                        ),
                    },
                    {
                        "field": "message_template_status_update",
                        "value": OTHER_FIELDS["message_template_status_update"],
                    },
                ],
            },
        ],
    }
    raw = wrap(payload)
    out = events(raw)
    assert [(e.kind, e.event_key.split(":")[0]) for e in out] == [
        (EventKind.MESSAGE, wamid(1)),
        (EventKind.MESSAGE, wamid(2)),
        (EventKind.MESSAGE, wamid(3)),
        (EventKind.STATUS, wamid(10)),
        (EventKind.CHANGE, "change"),
        (EventKind.STATUS, wamid(10)),
        (EventKind.STATUS, wamid(10)),
        (EventKind.ERROR, "error"),
        (EventKind.CHANGE, "change"),
    ]
    assert [e.event_key for e in out if e.kind is EventKind.STATUS] == [
        f"{wamid(10)}:sent",
        f"{wamid(10)}:delivered",
        f"{wamid(10)}:read",
    ]
    assert [e.entry_id for e in out] == [WABA_ID] * 7 + ["209876543210000"] * 2
    assert out[7].conversation_key == f"{other_pn}:-"
    assert out[8].field == "message_template_status_update"
    assert len({e.event_key for e in out}) == len(out)
    for e in out:
        assert e.webhook_id == WEBHOOK_ID
        assert e.received_at == RECEIVED
        assert e.source == SOURCE
        assert e.object == "whatsapp_business_account"
        assert e.envelope_headers == {"content-type": "application/json"}
        assert e.envelope_raw == raw  # small envelopes ride along untouched


def test_several_messages_in_one_value_share_the_conversation() -> None:
    msgs = [{**MESSAGE_TYPES["text"], "id": wamid(n), "text": {"body": f"m{n}"}} for n in range(5)]
    out = events(wrap(messages_body(*msgs)))
    assert [e.event_key for e in out] == [wamid(n) for n in range(5)]
    assert [e.payload["text"]["body"] for e in out] == [f"m{n}" for n in range(5)]
    assert {e.conversation_key for e in out} == {f"{PHONE_NUMBER_ID}:{WA_ID}"}


def test_naive_envelope_timestamp_is_taken_as_utc() -> None:
    raw = json.dumps(
        {
            "id": WEBHOOK_ID,
            "body": messages_body(MESSAGE_TYPES["text"]),
            "timestamp": "2024-05-01T12:30:15",
        }
    ).encode()
    event = one_event(raw)
    assert event.received_at == RECEIVED


def test_envelope_without_timestamp_or_headers_is_fine() -> None:
    raw = json.dumps({"id": WEBHOOK_ID, "body": messages_body(MESSAGE_TYPES["text"])}).encode()
    event = one_event(raw)
    assert event.received_at is None
    assert event.envelope_headers == {}


def test_source_may_be_absent() -> None:
    out = parse_record(wrap(messages_body(MESSAGE_TYPES["text"])), None)
    assert len(out) == 1 and isinstance(out[0], WebhookEvent)
    assert out[0].source is None


def test_large_envelopes_are_not_carried_on_each_event() -> None:
    big = {**MESSAGE_TYPES["text"], "text": {"body": "x" * (ENVELOPE_CARRY_LIMIT + 10)}}
    event = one_event(wrap(messages_body(big)))
    assert event.envelope_raw is None
    assert event.payload == big


# -- raw string bodies -------------------------------------------------------------------------


def _comparable(e: WebhookEvent) -> dict[str, Any]:
    return e.model_dump(exclude={"envelope_raw"})


def test_raw_json_string_body_parses_like_an_object() -> None:
    payload = body(
        (
            "messages",
            value(messages=[MESSAGE_TYPES["text"], MESSAGE_TYPES["order"]], contacts=[sender()]),
        ),
        ("messages", value(statuses=[STATUSES["failed"]])),
        ("account_update", OTHER_FIELDS["account_update"]),
    )
    as_object = events(wrap(payload))
    as_string = events(wrap(json.dumps(payload)))
    pretty = events(wrap(json.dumps(payload, indent=2, ensure_ascii=False)))
    assert len(as_object) == 4
    assert [_comparable(e) for e in as_string] == [_comparable(e) for e in as_object]
    assert [_comparable(e) for e in pretty] == [_comparable(e) for e in as_object]


def test_raw_string_body_without_app_secret_is_not_checked() -> None:
    raw = wrap(
        json.dumps(messages_body(MESSAGE_TYPES["text"])), {"X-Hub-Signature-256": "sha256=00"}
    )
    assert one_event(raw).event_key == wamid(1)


# -- signatures --------------------------------------------------------------------------------


def test_correct_signature_gives_events() -> None:
    payload = messages_body(MESSAGE_TYPES["text"], {**MESSAGE_TYPES["image"], "id": wamid(2)})
    out = events(signed_envelope(WEBHOOK_ID, payload, SECRET), SECRET)
    assert [e.event_key for e in out] == [wamid(1), wamid(2)]


def test_any_of_several_app_secrets_may_sign() -> None:
    """WA_APP_SECRETS: several apps, or a rotation; a body signed by none is still refused."""
    payload = messages_body(MESSAGE_TYPES["text"])
    secrets = (b"old-app-secret", SECRET)
    assert one_event(signed_envelope(WEBHOOK_ID, payload, SECRET), secrets).event_key == wamid(1)
    (letter,) = parse_record(signed_envelope(WEBHOOK_ID, payload, b"third"), SOURCE, secrets)
    assert isinstance(letter, DeadLetter) and letter.error_class is ErrorClass.BAD_SIGNATURE


def test_signature_over_unicode_body() -> None:
    text = {**MESSAGE_TYPES["text"], "text": {"body": "Grüße 👋 ☕"}}
    raw_body = json.dumps(messages_body(text), ensure_ascii=False)
    event = one_event(wrap(raw_body, {"X-Hub-Signature-256": sign(raw_body)}), SECRET)
    assert event.payload["text"]["body"] == "Grüße 👋 ☕"


@pytest.mark.parametrize(
    "name",
    ["X-Hub-Signature-256", "x-hub-signature-256", "X-HUB-SIGNATURE-256", "x-Hub-sIgnature-256"],
)
def test_signature_header_lookup_is_case_insensitive(name: str) -> None:
    raw_body = json.dumps(messages_body(MESSAGE_TYPES["text"]))
    raw = wrap(raw_body, {"content-type": "application/json", name: sign(raw_body)})
    assert one_event(raw, SECRET).event_key == wamid(1)


def test_signature_header_as_a_list_uses_the_first_value() -> None:
    raw_body = json.dumps(messages_body(MESSAGE_TYPES["text"]))
    raw = wrap(raw_body, {"x-hub-signature-256": [sign(raw_body), "sha256=ff"]})
    assert one_event(raw, SECRET).event_key == wamid(1)


def test_uppercase_hex_signature_is_accepted() -> None:
    raw_body = json.dumps(messages_body(MESSAGE_TYPES["text"]))
    good = sign(raw_body)
    raw = wrap(raw_body, {"X-Hub-Signature-256": "sha256=" + good[7:].upper()})
    assert one_event(raw, SECRET).event_key == wamid(1)


_RAW_BODY = json.dumps(messages_body(MESSAGE_TYPES["text"]))

BAD_SIGNATURES: dict[str, dict[str, Any]] = {
    "wrong_secret": {"X-Hub-Signature-256": sign(_RAW_BODY, b"not-the-secret")},
    "signature_of_other_body": {"X-Hub-Signature-256": sign(_RAW_BODY + " ")},
    "truncated": {"X-Hub-Signature-256": sign(_RAW_BODY)[:-2]},
    "all_zero": {"X-Hub-Signature-256": "sha256=" + "0" * 64},
    "missing_header": {"content-type": "application/json"},
    "empty_header": {"X-Hub-Signature-256": ""},
    "no_scheme": {"X-Hub-Signature-256": sign(_RAW_BODY)[7:]},
    "sha1_scheme": {"X-Hub-Signature-256": "sha1=" + sign(_RAW_BODY)[7:]},
    "scheme_only": {"X-Hub-Signature-256": "sha256="},
    "empty_list": {"X-Hub-Signature-256": []},
    "other_header_name": {"X-Hub-Signature": sign(_RAW_BODY)},
}


@pytest.mark.parametrize("name", sorted(BAD_SIGNATURES))
def test_bad_signature_is_one_dead_letter(name: str) -> None:
    raw = wrap(_RAW_BODY, BAD_SIGNATURES[name])
    dl = dead_letter(raw, SECRET)
    assert dl.error_class is ErrorClass.BAD_SIGNATURE
    assert "X-Hub-Signature-256" in dl.reason
    assert dl.original == raw
    assert dl.webhook_id == WEBHOOK_ID
    assert dl.source == SOURCE


def test_tampered_body_fails_the_signature() -> None:
    raw_body = _RAW_BODY
    signature = sign(raw_body)
    tampered = raw_body.replace("Hi, is my order", "Hi, is MY order")
    assert tampered != raw_body
    dl = dead_letter(wrap(tampered, {"X-Hub-Signature-256": signature}), SECRET)
    assert dl.error_class is ErrorClass.BAD_SIGNATURE


def test_non_ascii_signature_header_is_a_bad_signature() -> None:
    raw = wrap(_RAW_BODY, {"X-Hub-Signature-256": "sha256=é" + "0" * 63})
    dl = dead_letter(raw, SECRET)
    assert dl.error_class is ErrorClass.BAD_SIGNATURE


# -- bad input ---------------------------------------------------------------------------------


def _env(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _text_without(key: str) -> dict[str, Any]:
    return {k: v for k, v in MESSAGE_TYPES["text"].items() if k != key}


_GOOD = messages_body(MESSAGE_TYPES["text"])

_WABA = "whatsapp_business_account"
_E = ErrorClass.INVALID_ENVELOPE
_J = ErrorClass.INVALID_JSON
_P = ErrorClass.INVALID_PAYLOAD


def _messages_value_with(**fields: Any) -> dict[str, Any]:
    return body(("messages", {**value(messages=[MESSAGE_TYPES["text"]]), **fields}))


def _with_id(message_id: Any) -> dict[str, Any]:
    return messages_body({**MESSAGE_TYPES["text"], "id": message_id})


def _status_without(key: str) -> dict[str, Any]:
    return statuses_body({k: v for k, v in STATUSES["read"].items() if k != key})


# name -> (raw bytes, or a body to wrap in a good envelope; error class; reason must contain)
BAD_INPUT: dict[str, tuple[Any, ErrorClass, str]] = {
    "none": (None, _E, "empty record"),
    "empty_bytes": (b"", _E, "empty record"),
    "not_json": (b"POST /webhook HTTP/1.1", _J, "envelope is not JSON"),
    "truncated_json": (wrap(_GOOD)[:-7], _J, "envelope is not JSON"),
    "not_utf8": (b'{"id": "\xff\xfe"}', _J, "envelope is not JSON"),
    "json_array": (b"[1, 2, 3]", _E, "invalid envelope: (root)"),
    "json_string": (b'"hello"', _E, "invalid envelope: (root)"),
    "json_null": (b"null", _E, "invalid envelope: (root)"),
    "json_number": (b"42", _E, "invalid envelope: (root)"),
    "envelope_missing_id": (_env(body=_GOOD), _E, "id: field required"),
    "envelope_empty_id": (_env(id="", body=_GOOD), _E, "id: string should"),
    "envelope_id_not_string": (_env(id=123, body=_GOOD), _E, "id: input should"),
    "envelope_missing_body": (_env(id=WEBHOOK_ID), _E, "body: field required"),
    "envelope_body_is_list": (_env(id=WEBHOOK_ID, body=[_GOOD]), _E, "body."),
    "envelope_body_is_null": (_env(id=WEBHOOK_ID, body=None), _E, "body."),
    "envelope_headers_not_object": (_env(id=WEBHOOK_ID, body=_GOOD, headers="a: 1"), _E, "headers"),
    "body_string_not_json": (wrap("object=whatsapp&entry=1"), _J, "body is not JSON"),
    "body_string_empty": (wrap(""), _J, "body is not JSON"),
    "body_string_truncated": (wrap(json.dumps(_GOOD)[:-3]), _J, "body is not JSON"),
    "body_string_is_json_array": (wrap("[]"), _P, "not a WhatsApp payload: (root)"),
    "object_is_page": ({**_GOOD, "object": "page"}, _P, "object is 'page'"),
    "object_is_instagram": ({**_GOOD, "object": "instagram"}, _P, "object is 'instagram'"),
    "object_missing": ({"entry": _GOOD["entry"]}, _P, "object: field required"),
    "entry_not_list": ({**_GOOD, "entry": _GOOD["entry"][0]}, _P, "entry: input should"),
    "entry_empty": ({**_GOOD, "entry": []}, _P, "entry: list should"),
    "entry_missing": ({"object": _WABA}, _P, "entry: field required"),
    "entry_without_changes": (
        {"object": _WABA, "entry": [{"id": WABA_ID, "time": 1}]},
        _P,
        "no changes",
    ),
    "entry_with_empty_changes": (
        {"object": _WABA, "entry": [{"id": WABA_ID, "changes": []}]},
        _P,
        "no changes",
    ),
    "entry_missing_id": (
        {"object": _WABA, "entry": [{"changes": _GOOD["entry"][0]["changes"]}]},
        _P,
        "entry.0.id",
    ),
    "change_value_not_object": (
        body(("messages", [MESSAGE_TYPES["text"]])),  # type: ignore[arg-type]
        _P,
        "changes.0.value",
    ),
    "change_missing_field": (
        {"object": _WABA, "entry": [{"id": WABA_ID, "changes": [{"value": value()}]}]},
        _P,
        "changes.0.field",
    ),
    "message_id_missing": (messages_body(_text_without("id")), _P, "messages.0.id: field required"),
    "message_id_empty": (_with_id(""), _P, "messages.0.id"),
    "message_id_is_list": (_with_id([wamid(1)]), _P, "messages.0.id"),
    "message_id_is_object": (_with_id({"id": wamid(1)}), _P, "messages.0.id"),
    "message_id_is_number": (_with_id(12345), _P, "messages.0.id"),
    "message_id_is_null": (_with_id(None), _P, "messages.0.id"),
    "messages_not_list": (_messages_value_with(messages=MESSAGE_TYPES["text"]), _P, "messages:"),
    "status_id_missing": (_status_without("id"), _P, "statuses.0.id: field required"),
    "status_state_missing": (_status_without("status"), _P, "statuses.0.status: field required"),
    "metadata_missing_phone_number_id": (
        _messages_value_with(metadata={"display_phone_number": DISPLAY_NUMBER}),
        _P,
        "metadata.phone_number_id: field required",
    ),
    "metadata_phone_number_id_not_string": (
        _messages_value_with(metadata={"phone_number_id": [PHONE_NUMBER_ID]}),
        _P,
        "metadata.phone_number_id",
    ),
    "metadata_not_object": (_messages_value_with(metadata=PHONE_NUMBER_ID), _P, "metadata"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_bad_input_is_exactly_one_dead_letter(name: str) -> None:
    given, error_class, hint = BAD_INPUT[name]
    raw = given if given is None or isinstance(given, bytes) else wrap(given)
    dl = dead_letter(raw)
    assert dl.error_class is error_class, dl.reason
    assert dl.reason and hint.lower() in dl.reason.lower(), dl.reason
    assert len(dl.reason) <= 600
    assert dl.original == (raw if raw is not None else b"")
    assert dl.source == SOURCE
    assert dl.event is None and dl.event_key is None
    if error_class is ErrorClass.INVALID_PAYLOAD or name.startswith("body_string"):
        assert dl.webhook_id == WEBHOOK_ID  # the envelope was readable


# -- one bad part among good ones -------------------------------------------------------------


def _split_out(raw: bytes) -> tuple[list[WebhookEvent], list[DeadLetter]]:
    out = parse(raw)
    return (
        [e for e in out if isinstance(e, WebhookEvent)],
        [d for d in out if isinstance(d, DeadLetter)],
    )


def test_one_bad_message_is_its_own_dead_letter_and_its_sibling_goes_on() -> None:
    good = MESSAGE_TYPES["text"]
    bad = {**MESSAGE_TYPES["image"], "id": wamid(2), "image": "not an object"}
    raw = wrap(messages_body(good, bad))
    (event,), (dl,) = _split_out(raw)
    assert event.event_key == wamid(1) and event.payload == good
    assert dl.error_class is ErrorClass.INVALID_PAYLOAD
    assert dl.reason.startswith("invalid message: messages.1.image"), dl.reason
    assert dl.event_key == wamid(2)  # the re-drive tools find it, and its marker, by this key
    assert dl.webhook_id == WEBHOOK_ID and dl.source == SOURCE
    assert dl.original == raw and not dl.is_rebuilt()


def test_a_message_without_a_usable_id_is_dead_lettered_without_a_key() -> None:
    bad = {**MESSAGE_TYPES["image"], "id": {"not": "a string"}}
    (event,), (dl,) = _split_out(wrap(messages_body(MESSAGE_TYPES["text"], bad)))
    assert event.event_key == wamid(1)
    assert "messages.1.id" in dl.reason and dl.event_key is None


def test_numeric_message_timestamp_is_coerced_and_flagged() -> None:
    numeric = {**MESSAGE_TYPES["text"], "timestamp": 1714566615}
    sibling = {**MESSAGE_TYPES["image"], "id": wamid(2)}
    first, second = events(wrap(messages_body(numeric, sibling)))
    assert first.event_key == wamid(1)  # the key it has with a string timestamp
    assert first.payload == {**numeric, "timestamp": "1714566615"}
    assert first.coerced == ("payload.timestamp",)
    assert first.for_handler()["coerced"] == ["payload.timestamp"]
    assert second.payload == sibling and second.coerced == ()
    assert numeric["timestamp"] == 1714566615  # the input is not rewritten in place


@pytest.mark.parametrize("given", [1714566615.0])
def test_an_integral_float_timestamp_is_coerced(given: float) -> None:
    event = one_event(wrap(messages_body({**MESSAGE_TYPES["text"], "timestamp": given})))
    assert event.payload["timestamp"] == "1714566615"


@pytest.mark.parametrize("given", [True, 1714566615.5, float("inf"), [1714566615], {"s": 1}])
def test_a_timestamp_that_is_no_whole_number_is_not_coerced(given: Any) -> None:
    (event,), (dl,) = _split_out(
        wrap(messages_body({**MESSAGE_TYPES["text"], "timestamp": given}, MESSAGE_TYPES["image"]))
    )
    assert dl.event_key == wamid(1) and "messages.0.timestamp" in dl.reason
    assert event.event_key == MESSAGE_TYPES["image"]["id"]


def test_numeric_status_timestamp_is_coerced_and_flagged() -> None:
    numeric = {**STATUSES["delivered"], "timestamp": 1714566700}
    first, second = events(wrap(statuses_body(numeric, STATUSES["read"])))
    assert first.event_key == f"{wamid(1)}:delivered"
    assert first.payload["timestamp"] == "1714566700"
    assert first.coerced == ("payload.timestamp",)
    assert second.event_key == f"{wamid(1)}:read" and second.coerced == ()


def test_bad_status_is_keyed_on_its_id_and_state() -> None:
    bad = {**STATUSES["read"], "errors": "none"}
    (event,), (dl,) = _split_out(wrap(statuses_body(STATUSES["sent"], bad)))
    assert event.event_key == f"{wamid(1)}:sent"
    assert dl.event_key == f"{wamid(1)}:read" and "statuses.1.errors" in dl.reason


def test_bad_value_level_error_is_keyed_as_it_would_be() -> None:
    bad = {**VALUE_ERROR, "code": "not a number"}
    (event,), (dl,) = _split_out(wrap(errors_body(VALUE_ERROR, bad)))
    assert event.kind is EventKind.ERROR
    assert dl.reason.startswith("invalid error: errors.1.code"), dl.reason
    assert dl.event_key == "error:" + content_hash(PHONE_NUMBER_ID, bad)  # as a valid one is


def test_numeric_phone_number_id_is_coerced_for_every_event_of_the_value() -> None:
    as_text = events(wrap(messages_body(MESSAGE_TYPES["text"])))
    v = value(messages=[MESSAGE_TYPES["text"]], statuses=[STATUSES["read"]], contacts=[sender()])
    v["metadata"] = {**v["metadata"], "phone_number_id": int(PHONE_NUMBER_ID)}
    message, status_event = events(wrap(body(("messages", v))))
    assert message.phone_number_id == PHONE_NUMBER_ID
    assert message.conversation_key == as_text[0].conversation_key
    assert message.value_context["metadata"]["phone_number_id"] == PHONE_NUMBER_ID
    assert message.event_key == as_text[0].event_key
    for event in (message, status_event):
        assert event.coerced == ("value_context.metadata.phone_number_id",)


def test_coercions_add_up_on_one_event() -> None:
    v = value(messages=[{**MESSAGE_TYPES["text"], "timestamp": 1}], contacts=[sender()])
    v["metadata"] = {**v["metadata"], "phone_number_id": int(PHONE_NUMBER_ID)}
    raw = _env(id=WEBHOOK_ID, body=body(("messages", v)), timestamp="yesterday")
    event = one_event(raw)
    assert event.coerced == (
        "received_at",
        "value_context.metadata.phone_number_id",
        "payload.timestamp",
    )


def test_a_bad_messages_value_is_dead_lettered_and_other_changes_go_on() -> None:
    broken = {**value(messages=[MESSAGE_TYPES["text"]]), "metadata": {"phone_number_id": ["x"]}}
    raw = wrap(body(("messages", broken), ("account_update", OTHER_FIELDS["account_update"])))
    (event,), (dl,) = _split_out(raw)
    assert event.kind is EventKind.CHANGE
    assert dl.reason.startswith("invalid messages value: metadata.phone_number_id"), dl.reason
    assert dl.event_key is None  # it holds events that could not be told apart


def test_a_bad_change_is_dead_lettered_and_its_siblings_go_on() -> None:
    payload = messages_body(MESSAGE_TYPES["text"])
    payload["entry"][0]["changes"].insert(0, {"value": {"event": "x"}})  # no field
    (event,), (dl,) = _split_out(wrap(payload))
    assert event.event_key == wamid(1)
    assert dl.reason.startswith("invalid change: entry.0.changes.0.field"), dl.reason
    assert dl.event_key is None


def test_a_bad_entry_is_dead_lettered_and_other_entries_go_on() -> None:
    payload = messages_body(MESSAGE_TYPES["text"])
    payload["entry"].insert(0, {"time": 1, "changes": payload["entry"][0]["changes"]})  # no id
    (event,), (dl,) = _split_out(wrap(payload))
    assert event.event_key == wamid(1)
    assert dl.reason.startswith("invalid entry: entry.0.id"), dl.reason


def test_an_entry_without_changes_beside_a_bad_one_is_no_error() -> None:
    payload = messages_body(MESSAGE_TYPES["text"])
    payload["entry"] += [{"id": "1", "time": 1}, {"changes": []}]  # no changes; no id
    (event,), (dl,) = _split_out(wrap(payload))
    assert event.event_key == wamid(1)
    assert dl.reason.startswith("invalid entry: entry.2.id"), dl.reason


def test_a_value_whose_items_are_all_bad_is_only_dead_letters() -> None:
    bad = [{**MESSAGE_TYPES["text"], "id": wamid(n), "text": 5} for n in (1, 2)]
    out = parse(wrap(messages_body(*bad)))
    assert [type(x) for x in out] == [DeadLetter, DeadLetter]  # no change event besides
    assert [d.event_key for d in out if isinstance(d, DeadLetter)] == [wamid(1), wamid(2)]


def test_a_bad_part_of_a_large_webhook_carries_an_envelope_rebuilt_around_it() -> None:
    from wa_worker.sinks.records import dead_letter_record

    big = {**MESSAGE_TYPES["text"], "text": {"body": "x" * (ENVELOPE_CARRY_LIMIT + 10)}}
    bad = {**MESSAGE_TYPES["image"], "id": wamid(2), "image": "not an object"}
    raw = wrap(messages_body(big, bad))
    (event,), (dl,) = _split_out(raw)
    assert event.event_key == wamid(1) and event.envelope_raw is None
    assert dl.is_rebuilt() and dl.original is not None and len(dl.original) < 2000
    headers = dict(dead_letter_record(dl, "dlq", "in").headers)
    assert headers["wa-envelope-rebuilt"] == b"true"
    assert headers["wa-event-key"] == wamid(2).encode()
    # Re-driven, it fails the same way, alone.
    (again,) = parse(dl.original)
    assert isinstance(again, DeadLetter) and again.event_key == dl.event_key
    assert again.reason.startswith("invalid message: messages.0.image"), again.reason
    assert again.webhook_id == WEBHOOK_ID


def test_unusable_envelope_timestamp_falls_back_to_the_receive_time() -> None:
    raw = _env(id=WEBHOOK_ID, body=messages_body(MESSAGE_TYPES["text"]), timestamp="yesterday")
    kafka_ms = 1714566620123
    event = one_event_at(raw, kafka_ms)
    assert event.received_at == datetime(2024, 5, 1, 12, 30, 20, 123000, tzinfo=UTC)
    assert event.coerced == ("received_at",)
    assert event.for_handler()["coerced"] == ["received_at"]
    assert event.event_key == wamid(1)
    # Without a Kafka time (a replayed file, say), the current time.
    before = datetime.now(UTC)
    event = one_event(raw)
    assert event.received_at is not None and event.received_at >= before
    assert event.coerced == ("received_at",)


def one_event_at(raw: bytes, received_ms: int) -> WebhookEvent:
    (event,) = parse_record(raw, SOURCE, None, received_ms)
    assert isinstance(event, WebhookEvent), event
    return event


def test_a_good_envelope_timestamp_is_not_replaced() -> None:
    event = one_event_at(wrap(messages_body(MESSAGE_TYPES["text"])), 1714566620123)
    assert event.received_at == RECEIVED and event.coerced == ()


def test_a_bad_timestamp_does_not_excuse_other_envelope_errors() -> None:
    dl = dead_letter(_env(id=123, body=_GOOD, timestamp="soon"))
    assert dl.error_class is ErrorClass.INVALID_ENVELOPE
    assert "id:" in dl.reason and "timestamp" in dl.reason


def test_events_pickled_before_coerced_existed_still_load() -> None:
    import pickle

    event = one_event(wrap(messages_body(MESSAGE_TYPES["text"])))
    state = event.__getstate__()
    del state["__dict__"]["coerced"]
    old = WebhookEvent.__new__(WebhookEvent)
    old.__setstate__(state)
    assert old.coerced == () and old.for_handler() == event.for_handler()
    assert pickle.loads(pickle.dumps(old)) == event


def test_bad_input_also_dead_letters_with_an_app_secret() -> None:
    dl = dead_letter(b"{not json", SECRET)
    assert dl.error_class is ErrorClass.INVALID_JSON
    raw_body = "not json at all"
    dl = dead_letter(wrap(raw_body, {"X-Hub-Signature-256": sign(raw_body)}), SECRET)
    assert dl.error_class is ErrorClass.INVALID_JSON


# -- rebuilt single-event envelopes ------------------------------------------------------------


def _rebuilt(event: WebhookEvent) -> WebhookEvent:
    raw = json.dumps(event.single_event_envelope()).encode()
    out = parse_record(raw, event.source)
    assert len(out) == 1, out
    assert isinstance(out[0], WebhookEvent), out[0]
    return out[0]


def _assert_same_event(again: WebhookEvent, event: WebhookEvent) -> None:
    assert again.event_key == event.event_key
    assert again.conversation_key == event.conversation_key
    assert again.kind is event.kind
    assert again.payload == event.payload
    assert again.webhook_id == event.webhook_id
    assert again.entry_id == event.entry_id
    assert again.phone_number_id == event.phone_number_id
    assert again.wa_id == event.wa_id
    assert again.field == event.field
    assert again.received_at == event.received_at
    assert again.value_context == event.value_context
    assert again.envelope_headers == event.envelope_headers


def _mixed_webhook() -> bytes:
    return wrap(
        body(
            (
                "messages",
                value(
                    messages=[
                        MESSAGE_TYPES["text"],
                        {**MESSAGE_TYPES["order"], "id": wamid(2)},
                        {**MESSAGE_TYPES["interactive_list_reply"], "id": wamid(3)},
                    ],
                    contacts=[sender()],
                ),
            ),
            ("messages", value(statuses=[STATUSES["failed"]])),
            ("messages", value(errors=[VALUE_ERROR])),
            ("account_update", OTHER_FIELDS["account_update"]),
        ),
        {"content-type": "application/json", "x-request-id": "abc"},
    )


def test_a_rebuilt_message_envelope_parses_back_to_the_same_event() -> None:
    out = events(_mixed_webhook())
    messages = [e for e in out if e.kind is EventKind.MESSAGE]
    assert len(messages) == 3
    for event in messages:
        _assert_same_event(_rebuilt(event), event)


@pytest.mark.parametrize("kind", [EventKind.STATUS, EventKind.ERROR])
def test_rebuilt_status_and_error_envelopes_parse_back(kind: EventKind) -> None:
    (event,) = [e for e in events(_mixed_webhook()) if e.kind is kind]
    _assert_same_event(_rebuilt(event), event)


def test_rebuilt_message_of_a_username_user_parses_back() -> None:
    message = {**_text_without("from"), "from_user_id": USER_ID}
    contacts = [{"profile": {"name": "K"}, "user_id": USER_ID}]
    event = one_event(wrap(messages_body(message, contacts=contacts)))
    _assert_same_event(_rebuilt(event), event)


def test_rebuilt_change_envelope_parses_back_to_the_same_key() -> None:
    (event,) = [e for e in events(_mixed_webhook()) if e.kind is EventKind.CHANGE]
    assert _rebuilt(event).event_key == event.event_key


def test_payloads_pass_on_exactly_as_received() -> None:
    message = {
        "from": WA_ID,
        "id": "wamid.loc",
        "type": "location",
        "location": {"latitude": "37.48", "longitude": "-122.14"},
    }
    audio = {
        "from": WA_ID,
        "id": "wamid.voice",
        "type": "audio",
        "audio": {"id": "m", "voice": "true"},
    }
    out = parse(wrap(body(("messages", value(messages=[message, audio], contacts=[sender()])))))
    assert [e.payload for e in out if isinstance(e, WebhookEvent)] == [message, audio]


def test_a_body_with_a_lone_surrogate_is_a_bad_signature() -> None:
    raw = json.dumps(
        {
            "id": "w",
            "headers": {"X-Hub-Signature-256": "sha256=" + "0" * 64},
            "body": '{"object": "\ud800"}',
        }
    ).encode()
    (letter,) = parse_record(raw, None, b"secret")
    assert isinstance(letter, DeadLetter) and letter.error_class is ErrorClass.BAD_SIGNATURE


@pytest.mark.parametrize("where", ["message", "body_string"])
def test_json_nested_deeper_than_the_limit_is_dead_lettered(where: str) -> None:
    from wa_worker.operators.parse import MAX_JSON_DEPTH

    deep: dict[str, object] = {}
    cur = deep
    for _ in range(MAX_JSON_DEPTH):
        cur["a"] = {}
        cur = cur["a"]  # type: ignore[assignment]
    message = text_message("wamid.deep", "3161")
    message["extra"] = deep
    body = payload(messages_value([message], wa_id="3161"))
    raw = envelope("w", json.dumps(body) if where == "body_string" else body)
    (out,) = parse_record(raw, None)
    assert isinstance(out, DeadLetter)
    assert out.error_class is ErrorClass.INVALID_PAYLOAD
    assert f"deeper than {MAX_JSON_DEPTH}" in out.reason


@pytest.mark.parametrize(
    ("stamp", "offset_h"),
    [
        ("2024-05-01T12:30:15Z", 0),
        ("2024-05-01T12:30:15+00:00", 0),
        ("2024-05-01T12:30:15", 0),
        ("2024-05-01T14:30:15+02:00", 2),
    ],
)
def test_an_envelope_time_in_utc_carries_the_standard_utc_zone(stamp: str, offset_h: int) -> None:
    # datetime.UTC's offset is read in C on every timestamp(); pydantic's equal zone is called.
    raw = _env(id=WEBHOOK_ID, body=messages_body(MESSAGE_TYPES["text"]), timestamp=stamp)
    received_at = one_event_at(raw, 0).received_at
    assert received_at is not None
    assert received_at == datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)
    if offset_h:
        assert received_at.utcoffset() == timedelta(hours=offset_h)
    else:
        assert received_at.tzinfo is UTC


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.5Z",
        "2026-01-01T10:11:12.123456+00:00",
        "2026-01-01T00:00:00-00:00",
        "2026-01-01T00:00:00",
        "2024-02-29T23:59:59.999999Z",
        "2026-02-29T00:00:00Z",  # no such day
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:00:60Z",
        "2026-01-01T00:00:00.1234567Z",  # more digits than microseconds: pydantic decides
        "2026-01-01T00:00:00+05:30",
        "2026-01-01 00:00:00Z",
        "1767225600",
        "\u0662026-01-01T00:00:00Z",  # a non-ASCII digit
        1767225600,
        None,
    ],
)
def test_the_fast_envelope_time_reads_as_the_envelope_model_does(stamp: Any) -> None:
    from pydantic import ValidationError

    from wa_worker.models.records import Envelope
    from wa_worker.operators.parse import _envelope_time

    try:
        want: datetime | str | None = Envelope.model_validate(
            {"id": "w", "headers": {}, "body": {}, "timestamp": stamp}
        ).timestamp
    except ValidationError:
        want = "refused"
    try:
        got: datetime | str | None = _envelope_time(stamp)
    except ValidationError:
        got = "refused"
    assert got == want
    if isinstance(got, datetime) and isinstance(want, datetime):
        assert (got.tzinfo is UTC) == (want.tzinfo is UTC)
        assert got.isoformat() == want.isoformat()
