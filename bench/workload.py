"""The benchmark's webhooks: generated once per bench run, the same bytes for every contestant.

Each record is an envelope `{id, headers, body, timestamp}` shaped by a `Shape` (`SHAPES`): the
base shape is ~1 KB holding one WhatsApp text message (contacts, metadata, padded text) from one
of ~2,000 conversations, with 10 % of records byte-identical redeliveries of an earlier envelope
(same webhook id and wamid); other shapes have few conversations, several events per webhook,
status bursts, or redeliveries of old events inside new webhooks.

Every id carries a fixed-width tag (`R0000` in the base set). A *stream* replays the base set
with a fresh tag per pass, so latency and soak runs can send any number of new webhooks without
generating them again: a redelivery still refers to an original of the same pass.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate, count

BASE_TAG = b"R0000"
_WORDS = [
    "order",
    "delivery",
    "tomorrow",
    "please",
    "confirm",
    "address",
    "payment",
    "received",
    "thanks",
    "size",
    "colour",
    "return",
    "invoice",
    "store",
    "opening",
    "hours",
    "available",
    "stock",
    "discount",
    "code",
    "tracking",
    "number",
]
_BUSINESSES = [("15550783881", "106540352242922"), ("15550783882", "106540352242923")]
_TAGS = count(1)


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes  # the webhook id: the edge keys by it, and the ceiling's output keeps it
    value: bytes
    new_events: int  # events seen here first; 0 for a redelivery, as a copy or in a new webhook

    @property
    def original(self) -> bool:
        return self.new_events > 0


@dataclass(frozen=True)
class Workload:
    records: list[Record]
    shape: str = "base"
    # new events among the first i records, for i in 0..len: the soak asks after every record
    _events: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_events", [0, *accumulate(r.new_events for r in self.records)])

    @property
    def unique(self) -> int:
        return self._events[-1]

    def outputs(self, sent: int, dedupes: bool) -> int:
        """Outputs expected after the first `sent` records of a stream (a deduping contestant
        writes one per new event, the ceiling one per record)."""
        if not dedupes:
            return sent
        passes, rest = divmod(sent, len(self.records))
        return passes * self.unique + self._events[rest]

    def stream(self, limit: int) -> Iterator[Record]:
        """`limit` records of new webhooks: the base set again and again under fresh tags."""
        sent = 0
        while sent < limit:
            tag = b"R%04d" % next(_TAGS)
            for record in self.records[: limit - sent]:
                yield Record(
                    record.key.replace(BASE_TAG, tag),
                    record.value.replace(BASE_TAG, tag),
                    record.new_events,
                )
            sent += min(len(self.records), limit - sent)


@dataclass(frozen=True)
class Shape:
    """How one workload's webhooks look. Redeliveries are either byte-identical copies of an
    earlier webhook (Meta retrying a delivery) or new webhooks carrying earlier events (Meta
    batching a retried event with others under a new webhook id)."""

    name: str
    conversations: int
    events_per_webhook: tuple[int, int] = (1, 1)  # inclusive range
    statuses: float = 0.0  # share of events that are statuses of earlier messages
    copies: float = 0.1  # share of webhooks that are byte-identical redeliveries
    rewraps: float = 0.0  # share of webhooks that carry only earlier events under a new id
    campaign: bool = False  # statuses come as sent, delivered, read of campaign messages


SHAPES = {
    s.name: s
    for s in (
        # The bench's original workload: one text per webhook, ~2,000 conversations.
        Shape("base", 2000),
        # A small business: ~60 customers talking at once.
        Shape("few", 60),
        # Meta batches several events per webhook; redeliveries under new webhook ids.
        Shape("batched", 2000, (1, 4), statuses=0.4, copies=0.0, rewraps=0.1),
        # A marketing campaign: sent/delivered/read for each recipient, batched.
        Shape("campaign", 2000, (1, 3), copies=0.0, rewraps=0.1, campaign=True),
        # All of it at once on few customers: the hardest case for per-conversation order.
        Shape("mixed", 60, (1, 4), statuses=0.4, copies=0.05, rewraps=0.1),
    )
}


def generate(records: int, shape: str = "base") -> Workload:
    spec = SHAPES[shape]
    rng = random.Random(20240601)
    started = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[Record] = []
    originals: list[Record] = []
    recent_events: list[_Event] = []
    sent_messages: list[_Event] = []  # messages whose statuses may follow
    campaign = _Campaign(spec.conversations)
    seen: set[str] = set()
    for i in range(records):
        at = started + timedelta(seconds=i)
        roll = rng.random()
        if originals and roll < spec.copies:
            # Meta redelivers a webhook it thinks failed, some time later: copy a recent one.
            earlier = rng.choice(originals[-500:])
            out.append(Record(earlier.key, earlier.value, 0))
            continue
        webhook_id = f"wh-{BASE_TAG.decode()}-{i:08d}"
        if recent_events and roll < spec.copies + spec.rewraps:
            count = min(len(recent_events), rng.randint(*spec.events_per_webhook))
            events = rng.sample(recent_events[-500:], count)
            out.append(_webhook(webhook_id, events, at, rng, new_events=0))
            continue
        events = []
        for _ in range(rng.randint(*spec.events_per_webhook)):
            if spec.campaign:
                event = campaign.next_status(at)
            elif sent_messages and rng.random() < spec.statuses:
                event = _status_of(rng.choice(sent_messages[-200:]), rng, at)
            else:
                event = _message(len(recent_events) + len(events), rng, spec.conversations, at)
                sent_messages.append(event)
            events.append(event)
        events = list({e.key: e for e in events}.values())  # one webhook, no event twice
        fresh = [e for e in events if e.key not in seen]
        seen.update(e.key for e in events)
        record = _webhook(webhook_id, events, at, rng, new_events=len(fresh))
        originals.append(record)
        recent_events.extend(events)
        out.append(record)
    return Workload(out, shape)


@dataclass(frozen=True, slots=True)
class _Event:
    key: str  # the worker's event key: the message id, or status id + status
    conversation: int
    kind: str  # "messages" or "statuses"
    item: dict[str, object]


def _customer(conversation: int) -> tuple[str, str, str]:
    display, phone_number_id = _BUSINESSES[conversation % len(_BUSINESSES)]
    return display, phone_number_id, f"3161{conversation:08d}"


def _wamid(n: int) -> str:
    return f"wamid.HBgMMzE2MTAwMDAwMDAwFQIAEhgg{BASE_TAG.decode()}{n:08d}QzE2MTAwMDAwMDAwAA=="


def _message(n: int, rng: random.Random, conversations: int, at: datetime) -> _Event:
    conversation = rng.randrange(conversations)
    wa_id = _customer(conversation)[2]
    text = " ".join(rng.choice(_WORDS) for _ in range(60))[:350]
    wamid = _wamid(n)
    item: dict[str, object] = {
        "from": wa_id,
        "id": wamid,
        "timestamp": str(int(at.timestamp())),
        "type": "text",
        "text": {"body": text},
    }
    return _Event(wamid, conversation, "messages", item)


def _status_item(wamid: str, status: str, wa_id: str, at: datetime) -> dict[str, object]:
    return {
        "id": wamid,
        "status": status,
        "timestamp": str(int(at.timestamp())),
        "recipient_id": wa_id,
        "conversation": {"id": f"conv-{wa_id}", "origin": {"type": "marketing"}},
        "pricing": {"billable": True, "pricing_model": "PMP", "category": "marketing"},
    }


def _status_of(message: _Event, rng: random.Random, at: datetime) -> _Event:
    status = rng.choice(("sent", "delivered", "read"))
    wa_id = _customer(message.conversation)[2]
    return _Event(
        f"{message.key}:{status}",
        message.conversation,
        "statuses",
        _status_item(message.key, status, wa_id, at),
    )


class _Campaign:
    """Statuses of business-sent messages: sent, then delivered, then read, per recipient."""

    def __init__(self, recipients: int) -> None:
        self._recipients = recipients
        self._sent = 0
        self._pending: list[tuple[int, int, int]] = []  # (message n, recipient, next stage)

    def next_status(self, at: datetime) -> _Event:
        stages = ("sent", "delivered", "read")
        if self._pending and (len(self._pending) > 50 or self._sent % 3 == 0):
            n, recipient, stage = self._pending.pop(0)
        else:
            n, recipient, stage = self._sent, self._sent % self._recipients, 0
            self._sent += 1
        if stage + 1 < len(stages):
            self._pending.append((n, recipient, stage + 1))
        wamid = _wamid(10_000_000 + n)
        status = stages[stage]
        item = _status_item(wamid, status, _customer(recipient)[2], at)
        return _Event(f"{wamid}:{status}", recipient, "statuses", item)


def _webhook(
    webhook_id: str, events: list[_Event], at: datetime, rng: random.Random, new_events: int
) -> Record:
    """One envelope; Meta sends one change per business phone number, so events are grouped
    by the business of their conversation."""
    changes = []
    by_business: dict[str, list[_Event]] = {}
    for event in events:
        by_business.setdefault(_customer(event.conversation)[1], []).append(event)
    for phone_number_id, group in by_business.items():
        display = next(d for d, p in _BUSINESSES if p == phone_number_id)
        value: dict[str, object] = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": display, "phone_number_id": phone_number_id},
        }
        messages = [e for e in group if e.kind == "messages"]
        statuses = [e for e in group if e.kind == "statuses"]
        if messages:
            customers = dict.fromkeys(e.conversation for e in messages)
            value["contacts"] = [
                {"profile": {"name": f"Customer {c}"}, "wa_id": _customer(c)[2]} for c in customers
            ]
            value["messages"] = [e.item for e in messages]
        if statuses:
            value["statuses"] = [e.item for e in statuses]
        changes.append({"value": value, "field": "messages"})
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": changes}],
    }
    headers = {
        "content-type": "application/json",
        "user-agent": "facebookexternalua",
        "x-hub-signature-256": "sha256=" + f"{rng.getrandbits(256):064x}",
    }
    envelope = {"id": webhook_id, "headers": headers, "body": body, "timestamp": at.isoformat()}
    value_bytes = json.dumps(envelope, separators=(",", ":")).encode()
    return Record(webhook_id.encode(), value_bytes, new_events)
