"""Pydantic models of the WhatsApp Cloud API webhook payload.

Tolerant by design: Meta adds fields and message types without notice, so every model keeps
unknown fields (`extra="allow"`) and `Message.type` is any string. What is checked is what the
worker relies on: the shape of `entry[].changes[].value` and the types of the ids it keys on.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Tolerant(BaseModel):
    # Validation only: events carry the dicts as received, so nothing is dumped back.
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class ErrorData(Tolerant):
    details: str | None = None


class WaError(Tolerant):
    code: int | None = None
    title: str | None = None
    message: str | None = None
    error_data: ErrorData | None = None
    href: str | None = None


class Metadata(Tolerant):
    display_phone_number: str | None = None
    phone_number_id: str


class Profile(Tolerant):
    name: str | None = None
    username: str | None = None


class Contact(Tolerant):
    wa_id: str | None = None
    user_id: str | None = None
    profile: Profile | None = None


class Text(Tolerant):
    body: str


class Media(Tolerant):
    """image, audio, video, document, sticker."""

    id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    animated: bool | None = None
    voice: bool | None = None
    url: str | None = None


class Location(Tolerant):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None
    url: str | None = None


class SharedContact(Tolerant):
    name: dict[str, Any] | None = None
    phones: list[dict[str, Any]] | None = None
    emails: list[dict[str, Any]] | None = None
    addresses: list[dict[str, Any]] | None = None
    org: dict[str, Any] | None = None
    urls: list[dict[str, Any]] | None = None
    birthday: str | None = None


class Reply(Tolerant):
    id: str
    title: str | None = None
    description: str | None = None


class Interactive(Tolerant):
    type: str
    button_reply: Reply | None = None
    list_reply: Reply | None = None
    nfm_reply: dict[str, Any] | None = None


class Button(Tolerant):
    payload: str | None = None
    text: str | None = None


class Reaction(Tolerant):
    message_id: str | None = None
    emoji: str | None = None


class ProductItem(Tolerant):
    product_retailer_id: str | None = None
    quantity: int | str | None = None
    item_price: float | str | None = None
    currency: str | None = None


class Order(Tolerant):
    catalog_id: str | None = None
    text: str | None = None
    product_items: list[ProductItem] = Field(default_factory=list)


class System(Tolerant):
    body: str | None = None
    type: str | None = None
    wa_id: str | None = None
    new_wa_id: str | None = None
    identity: str | None = None
    customer: str | None = None


class MessageContext(Tolerant):
    from_: str | None = Field(None, alias="from")
    id: str | None = None
    forwarded: bool | None = None
    frequently_forwarded: bool | None = None


class Message(Tolerant):
    id: str = Field(min_length=1)
    from_: str | None = Field(None, alias="from")
    from_user_id: str | None = None
    timestamp: str | None = None
    type: str = "unknown"
    context: MessageContext | None = None
    text: Text | None = None
    image: Media | None = None
    audio: Media | None = None
    video: Media | None = None
    document: Media | None = None
    sticker: Media | None = None
    location: Location | None = None
    contacts: list[SharedContact] | None = None
    interactive: Interactive | None = None
    button: Button | None = None
    reaction: Reaction | None = None
    order: Order | None = None
    system: System | None = None
    errors: list[WaError] | None = None


class Conversation(Tolerant):
    id: str | None = None
    origin: dict[str, Any] | None = None
    expiration_timestamp: str | None = None


class Pricing(Tolerant):
    billable: bool | None = None
    pricing_model: str | None = None
    category: str | None = None
    type: str | None = None


class Status(Tolerant):
    id: str = Field(min_length=1)
    status: str = Field(min_length=1)
    timestamp: str | None = None
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    conversation: Conversation | None = None
    pricing: Pricing | None = None
    errors: list[WaError] | None = None


class Value(Tolerant):
    messaging_product: str | None = None
    metadata: Metadata | None = None
    contacts: list[Contact] | None = None
    messages: list[Message] | None = None
    statuses: list[Status] | None = None
    errors: list[WaError] | None = None


class Change(Tolerant):
    field: str = Field(min_length=1)
    value: dict[str, Any]


class Entry(Tolerant):
    id: str
    time: int | None = None
    changes: list[Change] = Field(default_factory=list)


class WebhookPayload(Tolerant):
    object: str
    entry: list[Entry] = Field(min_length=1)
