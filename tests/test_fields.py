"""Every documented webhook field split per item: kind, event key and conversation key, from
fixtures written after Meta's published examples (each cites its reference page), and one
identity per customer across messages, statuses, echoes, calls and preferences. Pure."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from devtools.webhooks import envelope
from wa_worker.models.records import DeadLetter, EventKind, WebhookEvent
from wa_worker.operators.parse import content_hash, parse_record

WABA = "102290129340398"
PNID = "106540352242922"
BUSINESS_NUMBER = "15550783881"
PHONE = "16505551234"
BSUID = "US.13491208655302741918"
METADATA = {"display_phone_number": BUSINESS_NUMBER, "phone_number_id": PNID}
REFERENCE = "https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks"


def webhook(field: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "changes": [{"value": value, "field": field}]}],
    }


def split(body: dict[str, Any]) -> list[WebhookEvent]:
    out = parse_record(envelope("whk-1", body), None)
    assert not [o for o in out if isinstance(o, DeadLetter)], out
    return [o for o in out if isinstance(o, WebhookEvent)]


# -- fixtures, after Meta's examples -----------------------------------------------------------

# {REFERENCE}/reference/smb_message_echoes (example, plus `to_user_id` from the Business-scoped
# user IDs page: echoes carry the customer's BSUID since April 2026)
ECHOES = webhook(
    "smb_message_echoes",
    {
        "messaging_product": "whatsapp",
        "metadata": METADATA,
        "message_echoes": [
            {
                "from": BUSINESS_NUMBER,
                "to": PHONE,
                "to_user_id": BSUID,
                "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA",
                "timestamp": "1739321024",
                "type": "text",
                "text": {"body": "Your order has shipped!"},
            },
            {
                "from": BUSINESS_NUMBER,
                "to": "12125557890",
                "id": "wamid.HBgLMTIxMjU1NTc4OTAVAgARGBI0RkVBQjE4QzE5QzU2NUE3MDMA",
                "timestamp": "1739321030",
                "type": "image",
                "image": {"mime_type": "image/jpeg", "id": "1003383421387256"},
            },
        ],
    },
)

# https://developers.facebook.com/docs/whatsapp/cloud-api/calling/user-initiated-calls
# (connect and terminate webhooks) and .../calling/business-initiated-calls (call statuses)
CALLS = webhook(
    "calls",
    {
        "messaging_product": "whatsapp",
        "metadata": METADATA,
        "contacts": [{"profile": {"name": "Pablo Morales"}, "wa_id": PHONE, "user_id": BSUID}],
        "calls": [
            {
                "id": "wacid.ABGGFjFVU2AfAgo6V-Hc5eCgK5Gh",
                "to": BUSINESS_NUMBER,
                "from": PHONE,
                "from_user_id": BSUID,
                "event": "connect",
                "timestamp": "1739321024",
                "direction": "USER_INITIATED",
                "session": {"sdp_type": "offer", "sdp": "v=0\r\no=- 7669997803033704573 2 IN IP4"},
            },
            {
                "id": "wacid.ABGGFjFVU2AfAgo6V-Hc5eCgK5Gh",
                "to": BUSINESS_NUMBER,
                "from": PHONE,
                "from_user_id": BSUID,
                "event": "terminate",
                "direction": "USER_INITIATED",
                "timestamp": "1739321084",
                "status": "Completed",
                "start_time": "1739321030",
                "end_time": "1739321084",
                "duration": 54,
            },
        ],
    },
)
CALL_STATUSES = webhook(
    "calls",
    {
        "messaging_product": "whatsapp",
        "metadata": METADATA,
        "statuses": [
            {
                "id": "wacid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA",
                "timestamp": "1739321100",
                "type": "call",
                "status": "RINGING",
                "recipient_id": PHONE,
                "recipient_user_id": BSUID,
            }
        ],
    },
)
# A business-initiated call: the customer is `to`.
OUTBOUND_CALL = webhook(
    "calls",
    {
        "messaging_product": "whatsapp",
        "metadata": METADATA,
        "calls": [
            {
                "id": "wacid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA",
                "to": PHONE,
                "to_user_id": BSUID,
                "from": BUSINESS_NUMBER,
                "event": "connect",
                "timestamp": "1739321101",
                "direction": "BUSINESS_INITIATED",
                "session": {"sdp_type": "answer", "sdp": "v=0"},
            }
        ],
    },
)

# {REFERENCE}/reference/user_preferences (example; `user_id` per the BSUID page)
PREFERENCES = webhook(
    "user_preferences",
    {
        "messaging_product": "whatsapp",
        "metadata": METADATA,
        "contacts": [{"wa_id": PHONE, "user_id": BSUID}],
        "user_preferences": [
            {
                "wa_id": PHONE,
                "user_id": BSUID,
                "detail": "User requested to stop marketing messages",
                "category": "marketing_messages",
                "value": "stop",
                "timestamp": 1731705721,
            }
        ],
    },
)

# {REFERENCE}/reference/history (the example with two threads and a media placeholder)
HISTORY = webhook(
    "history",
    {
        "messaging_product": "whatsapp",
        "metadata": METADATA,
        "history": [
            {
                "metadata": {"phase": 0, "chunk_order": 1, "progress": 55},
                "threads": [
                    {
                        "id": PHONE,
                        "messages": [
                            {
                                "from": BUSINESS_NUMBER,
                                "id": "wamid.HBgLMTY0NjcwNDM1OTUVAgARGBIyNDlBOEI5QUQ4NDc0N0FCNjMA",
                                "timestamp": "1739230955",
                                "type": "text",
                                "text": {"body": "Here's the info you requested!"},
                                "history_context": {"status": "READ"},
                            },
                            {
                                "from": BUSINESS_NUMBER,
                                "id": "wamid.QyNUEHBgLMTY0NjcwNDM1OTUVAgARGBI1Rj3NEYxMzAzMzQ5MkEA",
                                "timestamp": "1739230970",
                                "type": "media_placeholder",
                                "history_context": {"status": "PLAYED"},
                            },
                            {
                                "from": PHONE,
                                "id": "wamid.N0FCNjMAHBgLMTY0NjcwNDM1OTUVAgARGBIyNDlBOEI5QUQ4NDc0",
                                "timestamp": "1739230970",
                                "type": "text",
                                "text": {"body": "Thanks!"},
                                "history_context": {"status": "READ"},
                            },
                        ],
                    },
                    {
                        "id": "12125557890",
                        "messages": [
                            {
                                "from": BUSINESS_NUMBER,
                                "id": "wamid.BIyNDlBOEI5N0FCNjMAHBgLMTY0NjcwNDM1OTUVAgARGQUQ4NDc0",
                                "timestamp": "1739230970",
                                "type": "text",
                                "text": {"body": "Thanks for your order!"},
                                "history_context": {"status": "DELIVERED"},
                            }
                        ],
                    },
                ],
            }
        ],
    },
)
# Same page: the media message's content, sent later as a `messages` list under `history`.
HISTORY_MEDIA = webhook(
    "history",
    {
        "messaging_product": "whatsapp",
        "metadata": METADATA,
        "messages": [
            {
                "from": PHONE,
                "id": "wamid.QyNUEHBgLMTY0NjcwNDM1OTUVAgARGBI1Rj3NEYxMzAzMzQ5MkEA",
                "timestamp": "1738796547",
                "type": "image",
                "image": {"caption": "Black Prince echeveria", "id": "24230790383178626"},
            }
        ],
    },
)
# Same page: history sharing declined.
HISTORY_DECLINED = webhook(
    "history",
    {
        "messaging_product": "whatsapp",
        "metadata": METADATA,
        "history": [
            {
                "errors": [
                    {
                        "code": 2593109,
                        "title": "History sync is turned off by the business",
                        "message": "History sync is turned off by the business",
                        "error_data": {"details": "History sharing is turned off"},
                    }
                ]
            }
        ],
    },
)

# {REFERENCE}/reference/smb_app_state_sync (example, and a removal)
STATE_SYNC = webhook(
    "smb_app_state_sync",
    {
        "messaging_product": "whatsapp",
        "metadata": METADATA,
        "state_sync": [
            {
                "type": "contact",
                "contact": {
                    "full_name": "Pablo Morales",
                    "first_name": "Pablo",
                    "phone_number": PHONE,
                },
                "action": "add",
                "metadata": {"timestamp": "1739321024"},
            },
            {
                "type": "contact",
                "contact": {"phone_number": "12125557890"},
                "action": "remove",
                "metadata": {"timestamp": "1739321025"},
            },
        ],
    },
)

# https://developers.facebook.com/docs/whatsapp/cloud-api/groups/webhooks (group_* fields)
GROUP_ID = "Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD"


def group_webhook(field: str, item: dict[str, Any]) -> dict[str, Any]:
    value = {"messaging_product": "whatsapp", "metadata": METADATA, "groups": [item]}
    return webhook(field, value)


GROUPS: dict[str, dict[str, Any]] = {
    "group_lifecycle_update": {
        "timestamp": "1739321024",
        "group_id": GROUP_ID,
        "type": "group_create",
        "request_id": "6f0a2c9e8b7d",
        "subject": "Order 1234 support",
        "invite_link": "https://chat.whatsapp.com/LINK_ID",
        "join_approval_mode": "auto_approve",
    },
    "group_participants_update": {
        "timestamp": "1739321030",
        "group_id": GROUP_ID,
        "type": "group_participants_add",
        "reason": "invite_link",
        "added_participants": [{"wa_id": PHONE, "user_id": BSUID}],
    },
    "group_settings_update": {
        "timestamp": "1739321040",
        "group_id": GROUP_ID,
        "type": "group_settings_update",
        "request_id": "7a1b3d0f9c8e",
        "group_subject": {"text": "Order 1234 support (closed)", "update_successful": True},
    },
    "group_status_update": {
        "timestamp": "1739321050",
        "group_id": GROUP_ID,
        "type": "group_suspend",
    },
}


# Standby: the value has the shape of a `messages` value (the app is a passive listener).
def standby_webhook() -> dict[str, Any]:
    return webhook(
        "standby",
        {
            "messaging_product": "whatsapp",
            "metadata": METADATA,
            "contacts": [{"profile": {"name": "Pablo"}, "wa_id": PHONE, "user_id": BSUID}],
            "messages": [
                {
                    "from": PHONE,
                    "from_user_id": BSUID,
                    "id": "wamid.standby1",
                    "timestamp": "1739321200",
                    "type": "text",
                    "text": {"body": "is anyone there?"},
                }
            ],
            "statuses": [
                {
                    "id": "wamid.out1",
                    "status": "read",
                    "timestamp": "1739321201",
                    "recipient_id": PHONE,
                    "recipient_user_id": BSUID,
                }
            ],
        },
    )


CUSTOMER = f"{PNID}:{BSUID}"  # the BSUID keys the customer whenever a payload has it


# -- per field -----------------------------------------------------------------------------------


def test_echoes_are_one_event_each_keyed_by_message_id_on_the_customer() -> None:
    first, second = split(ECHOES)
    items = ECHOES["entry"][0]["changes"][0]["value"]["message_echoes"]
    assert (first.kind, second.kind) == (EventKind.ECHO, EventKind.ECHO)
    assert first.event_key == items[0]["id"] and second.event_key == items[1]["id"]
    assert first.conversation_key == CUSTOMER
    assert (first.wa_id, first.user_id) == (PHONE, BSUID)
    assert second.conversation_key == f"{PNID}:12125557890"  # no BSUID: the phone
    assert first.payload == items[0] and "message_echoes" not in first.value_context


def test_an_echo_edit_or_revoke_does_not_pass_for_the_message_it_changes() -> None:
    body = copy.deepcopy(ECHOES)
    echo = body["entry"][0]["changes"][0]["value"]["message_echoes"][0]
    echo.update(type="revoke", revoke={"original_message_id": echo["id"]})
    assert split(body)[0].event_key == f"{echo['id']}:revoke"


def test_calls_are_keyed_by_call_id_and_event_on_the_customer() -> None:
    connect, terminate = split(CALLS)
    assert (connect.kind, terminate.kind) == (EventKind.CALL, EventKind.CALL)
    assert connect.event_key == "wacid.ABGGFjFVU2AfAgo6V-Hc5eCgK5Gh:connect"
    assert terminate.event_key == "wacid.ABGGFjFVU2AfAgo6V-Hc5eCgK5Gh:terminate"
    assert connect.conversation_key == terminate.conversation_key == CUSTOMER


def test_a_business_initiated_call_is_keyed_on_its_callee() -> None:
    (call,) = split(OUTBOUND_CALL)
    assert call.conversation_key == CUSTOMER and call.wa_id == PHONE


def test_call_statuses_are_call_events_keyed_by_call_id_and_status() -> None:
    (ringing,) = split(CALL_STATUSES)
    assert ringing.kind is EventKind.CALL
    assert ringing.event_key == "wacid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA:RINGING"
    assert ringing.conversation_key == CUSTOMER


def test_user_preferences_are_keyed_by_content_on_the_customer() -> None:
    (preference,) = split(PREFERENCES)
    item = PREFERENCES["entry"][0]["changes"][0]["value"]["user_preferences"][0]
    assert preference.kind is EventKind.USER_PREFERENCE
    assert preference.event_key == "user_preference:" + content_hash(PNID, item)
    assert preference.conversation_key == CUSTOMER
    # A redelivered preference inside another batch is the same event.
    again = copy.deepcopy(PREFERENCES)
    items = again["entry"][0]["changes"][0]["value"]["user_preferences"]
    items.insert(0, {**item, "value": "resume", "timestamp": 1731700000})
    assert split(again)[1].event_key == preference.event_key


def test_history_is_one_event_per_message_with_its_phase_and_thread() -> None:
    events = split(HISTORY)
    assert [e.kind for e in events] == [EventKind.HISTORY] * 4
    threads = HISTORY["entry"][0]["changes"][0]["value"]["history"][0]["threads"]
    ids = [m["id"] for t in threads for m in t["messages"]]
    assert [e.event_key for e in events] == [f"history:{i}" for i in ids]  # never a live key
    assert [e.conversation_key for e in events] == [f"{PNID}:{PHONE}:history"] * 3 + [
        f"{PNID}:12125557890:history"
    ]
    first = events[0]
    assert first.value_context["history_metadata"] == {"phase": 0, "chunk_order": 1, "progress": 55}
    assert first.value_context["history_thread"] == {"id": PHONE}
    assert first.wa_id == PHONE  # the business sent it: the customer is the thread


def test_history_media_follow_up_and_declined_sync_are_history_events() -> None:
    (media,) = split(HISTORY_MEDIA)
    assert media.kind is EventKind.HISTORY
    assert (
        media.event_key
        == "history:wamid.QyNUEHBgLMTY0NjcwNDM1OTUVAgARGBI1Rj3NEYxMzAzMzQ5MkEA:media"
    )
    assert media.conversation_key == f"{PNID}:{PHONE}:history"
    (declined,) = split(HISTORY_DECLINED)
    assert declined.kind is EventKind.HISTORY and declined.event_key.startswith("history:")
    assert declined.conversation_key == f"{PNID}:-:history"


def test_state_sync_is_one_event_per_contact() -> None:
    added, removed = split(STATE_SYNC)
    assert (added.kind, removed.kind) == (EventKind.STATE_SYNC, EventKind.STATE_SYNC)
    assert added.event_key.startswith("state_sync:") and added.event_key != removed.event_key
    assert added.conversation_key == f"{PNID}:{PHONE}"
    assert removed.conversation_key == f"{PNID}:12125557890"


@pytest.mark.parametrize("field", sorted(GROUPS))
def test_group_fields_are_keyed_by_group(field: str) -> None:
    (event,) = split(group_webhook(field, GROUPS[field]))
    assert event.kind is EventKind.GROUP and event.field == field
    assert event.event_key == f"group:{field}:" + content_hash(PNID, field, GROUPS[field])
    assert event.conversation_key == f"{PNID}:group:{GROUP_ID}"


def test_a_group_status_goes_on_the_group_conversation() -> None:
    status = {"id": "wamid.g1", "status": "read", "timestamp": "1739321060"}
    status |= {"recipient_id": GROUP_ID, "recipient_type": "group"}
    value = {"messaging_product": "whatsapp", "metadata": METADATA, "statuses": [status]}
    (event,) = split(webhook("messages", value))
    assert event.conversation_key == f"{PNID}:group:{GROUP_ID}"


def test_standby_events_are_observe_only_with_keys_apart_from_live_ones() -> None:
    message, status = split(standby_webhook())
    assert (message.kind, status.kind) == (EventKind.MESSAGE, EventKind.STATUS)
    assert message.observe_only and status.observe_only
    assert message.for_handler()["observe_only"] is True
    assert (message.event_key, status.event_key) == (
        "standby:wamid.standby1",
        "standby:wamid.out1:read",
    )
    assert message.conversation_key == status.conversation_key == CUSTOMER
    assert message.field == "standby"


@pytest.mark.parametrize(
    "field",
    ["account_update", "message_template_status_update", "phone_number_quality_update"],
)
def test_account_template_and_number_fields_stay_per_account_changes(field: str) -> None:
    (event,) = split(webhook(field, {"event": "X", "message_template_id": 1}))
    assert event.kind is EventKind.CHANGE and event.conversation_key == f"{WABA}:{field}"


@pytest.mark.parametrize(
    "value",
    [
        {"message_echoes": "not a list"},
        {"message_echoes": [1, 2]},
        {"calls": {"id": "x"}},
        {"unknown": True},
    ],
)
def test_unknown_item_shapes_pass_whole_as_a_change(value: dict[str, Any]) -> None:
    field = "calls" if "calls" in value else "smb_message_echoes"
    (event,) = split(webhook(field, value))
    assert event.kind is EventKind.CHANGE and event.payload == value


ALL = [
    ECHOES,
    CALLS,
    CALL_STATUSES,
    PREFERENCES,
    HISTORY,
    HISTORY_MEDIA,
    HISTORY_DECLINED,
    STATE_SYNC,
    standby_webhook(),
    *(group_webhook(f, item) for f, item in GROUPS.items()),
]


@pytest.mark.parametrize("body", ALL, ids=lambda b: b["entry"][0]["changes"][0]["field"])
def test_a_rebuilt_one_event_envelope_parses_back_to_the_same_event(body: dict[str, Any]) -> None:
    """The DLQ's envelope for a large webhook holds the event alone: a re-drive must give the
    same event (kind, keys, payload, context)."""
    for event in split(body):
        raw = json.dumps(event.single_event_envelope()).encode()
        (back,) = [e for e in parse_record(raw, None) if isinstance(e, WebhookEvent)]
        assert (back.kind, back.event_key, back.conversation_key) == (
            event.kind,
            event.event_key,
            event.conversation_key,
        )
        assert back.payload == event.payload and back.value_context == event.value_context


# -- one identity per customer -------------------------------------------------------------------


def test_a_customers_message_status_echo_call_and_preference_share_one_key() -> None:
    """Each payload carries the BSUID with whatever else it has: a phone, or nothing else."""
    message = webhook(
        "messages",
        {
            "messaging_product": "whatsapp",
            "metadata": METADATA,
            "contacts": [{"profile": {"username": "@pablo"}, "user_id": BSUID}],
            "messages": [
                {
                    "from_user_id": BSUID,  # a username user: no `from`
                    "id": "wamid.in1",
                    "timestamp": "1739321300",
                    "type": "text",
                    "text": {"body": "hi"},
                }
            ],
        },
    )
    status = webhook(
        "messages",
        {
            "messaging_product": "whatsapp",
            "metadata": METADATA,
            "contacts": [{"wa_id": PHONE, "user_id": BSUID}],
            "statuses": [
                {
                    "id": "wamid.out2",
                    "status": "delivered",
                    "timestamp": "1739321301",
                    "recipient_id": PHONE,  # the recipient's BSUID only in `contacts`
                }
            ],
        },
    )
    keys = {
        name: {e.conversation_key for e in split(body)}
        for name, body in {
            "message": message,
            "status": status,
            "echo": ECHOES,
            "call": CALLS,
            "outbound call": OUTBOUND_CALL,
            "preference": PREFERENCES,
        }.items()
    }
    keys["echo"] = {next(iter(k for k in keys["echo"] if BSUID in k))}
    assert keys == {name: {CUSTOMER} for name in keys}


@pytest.mark.parametrize(
    ("system", "change"),
    [
        (
            {
                "body": "Pablo changed from 16505551234 to 16505550000",
                "wa_id": "16505550000",
                "type": "user_changed_number",
            },
            {
                "type": "user_changed_number",
                "previous_wa_id": PHONE,
                "wa_id": "16505550000",
                "previous_user_id": BSUID,
                "user_id": None,
            },
        ),
        (
            {
                "body": f"Pablo changed from {BSUID} to US.99",
                "wa_id": PHONE,
                "user_id": "US.99",
                "type": "user_changed_user_id",
            },
            {
                "type": "user_changed_user_id",
                "previous_wa_id": PHONE,
                "wa_id": PHONE,
                "previous_user_id": BSUID,
                "user_id": "US.99",
            },
        ),
    ],
)
def test_identity_changes_carry_both_identifiers(
    system: dict[str, Any], change: dict[str, Any]
) -> None:
    message = {
        "from": PHONE,
        "from_user_id": BSUID,
        "id": "wamid.sys1",
        "timestamp": "1739321400",
        "type": "system",
        "system": system,
    }
    value = {"messaging_product": "whatsapp", "metadata": METADATA, "messages": [message]}
    (event,) = split(webhook("messages", value))
    assert event.identity_change == change
    assert event.for_handler()["identity_change"] == change
    assert event.conversation_key == CUSTOMER  # the customer as known before the change
