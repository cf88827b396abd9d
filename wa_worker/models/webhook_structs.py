"""msgspec mirrors of the webhook models (webhook.py), for the hot path's validation only.

`msgspec.convert` checks a decoded payload against these in C, several times faster than
building the pydantic models. They accept a subset of what the pydantic models accept (strict
types: no "3" for an int, no 3.0 for an int, no bool for an int), so whatever they refuse is
validated again by the pydantic models, whose errors say why and drive salvage.py. A test
(tests/test_webhook_structs.py) keeps every field, alias, default and constraint in step with
webhook.py. Unknown fields are ignored here: events carry the dicts as received.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec

T = TypeVar("T")

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
# The models read `from_` by its field name too (populate_by_name): a key of that name must
# fail here, whatever its value, so that pydantic reads the item as it always has.
ByName = msgspec.UnsetType


def checked(data: Any, kind: type[T]) -> T | None:
    """`data` as `kind` when msgspec finds it valid; None otherwise: pydantic decides. Besides
    its ValidationError, msgspec raises UnicodeEncodeError (a ValueError) on a lone surrogate
    in a key or in a string where an array is wanted."""
    try:
        return msgspec.convert(data, kind)
    except (ValueError, RecursionError):
        return None


class S(msgspec.Struct, gc=False):
    """gc=False: decoded JSON holds no cycles. (msgspec wants required fields first, so
    Metadata and Envelope list theirs in another order than the models.)"""


class ErrorData(S):
    details: str | None = None


class WaError(S):
    code: int | None = None
    title: str | None = None
    message: str | None = None
    error_data: ErrorData | None = None
    href: str | None = None


class Metadata(S):
    phone_number_id: str
    display_phone_number: str | None = None


class Profile(S):
    name: str | None = None
    username: str | None = None


class Contact(S):
    wa_id: str | None = None
    user_id: str | None = None
    profile: Profile | None = None


class Text(S):
    body: str


class Media(S):
    id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    animated: bool | None = None
    voice: bool | None = None
    url: str | None = None


class Location(S):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None
    url: str | None = None


class SharedContact(S):
    name: dict[str, Any] | None = None
    phones: list[dict[str, Any]] | None = None
    emails: list[dict[str, Any]] | None = None
    addresses: list[dict[str, Any]] | None = None
    org: dict[str, Any] | None = None
    urls: list[dict[str, Any]] | None = None
    birthday: str | None = None


class Reply(S):
    id: str
    title: str | None = None
    description: str | None = None


class Interactive(S):
    type: str
    button_reply: Reply | None = None
    list_reply: Reply | None = None
    nfm_reply: dict[str, Any] | None = None


class Button(S):
    payload: str | None = None
    text: str | None = None


class Reaction(S):
    message_id: str | None = None
    emoji: str | None = None


class ProductItem(S):
    product_retailer_id: str | None = None
    quantity: int | str | None = None
    item_price: float | str | None = None
    currency: str | None = None


class Order(S):
    catalog_id: str | None = None
    text: str | None = None
    product_items: list[ProductItem] = msgspec.field(default_factory=list)


class System(S):
    body: str | None = None
    type: str | None = None
    wa_id: str | None = None
    new_wa_id: str | None = None
    identity: str | None = None
    customer: str | None = None


class MessageContext(S):
    from_: str | None = msgspec.field(default=None, name="from")
    from_by_name: ByName = msgspec.field(default=msgspec.UNSET, name="from_")
    id: str | None = None
    forwarded: bool | None = None
    frequently_forwarded: bool | None = None


class Message(S):
    id: NonEmpty
    from_: str | None = msgspec.field(default=None, name="from")
    from_by_name: ByName = msgspec.field(default=msgspec.UNSET, name="from_")
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


class Conversation(S):
    id: str | None = None
    origin: dict[str, Any] | None = None
    expiration_timestamp: str | None = None


class Pricing(S):
    billable: bool | None = None
    pricing_model: str | None = None
    category: str | None = None
    type: str | None = None


class Status(S):
    id: NonEmpty
    status: NonEmpty
    timestamp: str | None = None
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    conversation: Conversation | None = None
    pricing: Pricing | None = None
    errors: list[WaError] | None = None


class Value(S):
    messaging_product: str | None = None
    metadata: Metadata | None = None
    contacts: list[Contact] | None = None
    messages: list[Message] | None = None
    statuses: list[Status] | None = None
    errors: list[WaError] | None = None


class Change(S):
    field: NonEmpty
    value: dict[str, Any]


class Entry(S):
    id: str
    time: int | None = None
    changes: list[Change] = msgspec.field(default_factory=list)


class WebhookPayload(S):
    object: str
    entry: Annotated[list[Entry], msgspec.Meta(min_length=1)]


class Envelope(S):
    """records.Envelope without its timestamp, which pydantic parses (its formats are many),
    and with its body (when not a string) checked as a payload in the same pass."""

    id: NonEmpty
    body: WebhookPayload | str
    headers: dict[str, Any] = msgspec.field(default_factory=dict)
