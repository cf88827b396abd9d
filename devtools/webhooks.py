"""Builders of WhatsApp Cloud API webhook payloads and envelopes, for tests and tools."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any

from wa_worker.models.records import EventKind, SourcePosition, WebhookEvent

PHONE_NUMBER_ID = "106540352242922"


def _now_s() -> int:
    return int(time.time())


def text_message(wamid: str, wa_id: str, body: str = "hello") -> dict[str, Any]:
    # Dated now: a message's retries end with its 24-hour window (operators/deadlines.py).
    return {
        "from": wa_id,
        "id": wamid,
        "timestamp": str(_now_s()),
        "type": "text",
        "text": {"body": body},
    }


def status(wamid: str, recipient: str, state: str = "delivered") -> dict[str, Any]:
    return {
        "id": wamid,
        "status": state,
        "timestamp": str(_now_s() + 1),  # after the message it reports on
        "recipient_id": recipient,
        "conversation": {"id": "c1", "origin": {"type": "service"}},
        "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"},
    }


def messages_value(
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    errors: list[dict[str, Any]] | None = None,
    wa_id: str | None = None,
    phone_number_id: str = PHONE_NUMBER_ID,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
    }
    if wa_id:
        value["contacts"] = [{"profile": {"name": "Kerry"}, "wa_id": wa_id}]
    if messages:
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    if errors:
        value["errors"] = errors
    return value


def payload(
    *values: dict[str, Any], field: str = "messages", waba_id: str = "102290129340398"
) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "changes": [{"field": field, "value": v} for v in values]}],
    }


def envelope(
    webhook_id: str,
    body: dict[str, Any] | str,
    headers: dict[str, Any] | None = None,
    timestamp: datetime | None = None,
) -> bytes:
    return json.dumps(
        {
            "id": webhook_id,
            "headers": headers or {"content-type": "application/json"},
            "body": body,
            "timestamp": (timestamp or datetime.now(UTC)).isoformat(),
        }
    ).encode()


def signed_envelope(webhook_id: str, body: dict[str, Any], secret: bytes) -> bytes:
    raw = json.dumps(body)
    signature = "sha256=" + hmac.new(secret, raw.encode(), hashlib.sha256).hexdigest()
    return envelope(webhook_id, raw, {"X-Hub-Signature-256": signature})


def conversation_webhook(webhook_id: str, wa_id: str, wamids: list[str]) -> bytes:
    """One webhook carrying several text messages of one customer."""
    messages = [text_message(w, wa_id, f"msg {w}") for w in wamids]
    return envelope(webhook_id, payload(messages_value(messages=messages, wa_id=wa_id)))


def text_event(
    wamid: str = "wamid.1",
    wa_id: str = "31612345678",
    body: str = "hello",
    *,
    webhook_id: str = "w-1",
    source: SourcePosition | None = None,
    received_at: datetime | None = None,
    envelope_raw: bytes | None = None,
) -> WebhookEvent:
    """A parsed text-message event, as the parser would give it, for tests of later steps."""
    return WebhookEvent(
        event_key=wamid,
        conversation_key=f"{PHONE_NUMBER_ID}:{wa_id}",
        kind=EventKind.MESSAGE,
        webhook_id=webhook_id,
        field="messages",
        object="whatsapp_business_account",
        entry_id="102290129340398",
        payload=text_message(wamid, wa_id, body),
        received_at=received_at,
        source=source or SourcePosition(topic="inbound", partition=0, offset=7),
        envelope_raw=envelope_raw,
    )
