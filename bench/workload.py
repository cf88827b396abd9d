"""The benchmark's webhooks: generated once per bench run, the same bytes for every contestant.

Each record is a ~1 KB envelope `{id, headers, body, timestamp}` holding one WhatsApp text
message (contacts, metadata, padded text) from one of ~2,000 conversations; 10 % of records are
redeliveries, byte-identical copies of an earlier envelope (same webhook id and wamid).

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
    original: bool  # False for a redelivery of an earlier record


@dataclass(frozen=True)
class Workload:
    records: list[Record]
    # originals among the first i records, for i in 0..len: the soak asks after every record
    _originals: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_originals", [0, *accumulate(r.original for r in self.records)])

    @property
    def unique(self) -> int:
        return self._originals[-1]

    def outputs(self, sent: int, dedupes: bool) -> int:
        """Outputs expected after the first `sent` records of a stream (a deduping contestant
        writes one per original, the ceiling one per record)."""
        if not dedupes:
            return sent
        passes, rest = divmod(sent, len(self.records))
        return passes * self.unique + self._originals[rest]

    def stream(self, limit: int) -> Iterator[Record]:
        """`limit` records of new webhooks: the base set again and again under fresh tags."""
        sent = 0
        while sent < limit:
            tag = b"R%04d" % next(_TAGS)
            for record in self.records[: limit - sent]:
                yield Record(
                    record.key.replace(BASE_TAG, tag),
                    record.value.replace(BASE_TAG, tag),
                    record.original,
                )
            sent += min(len(self.records), limit - sent)


def generate(records: int, conversations: int = 2000, redelivery: float = 0.1) -> Workload:
    rng = random.Random(20240601)
    started = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[Record] = []
    originals: list[Record] = []
    for i in range(records):
        if originals and rng.random() < redelivery:
            # Meta redelivers a webhook it thinks failed, some time later: copy a recent one.
            earlier = rng.choice(originals[-500:])
            out.append(Record(earlier.key, earlier.value, False))
            continue
        record = _original(len(originals), rng, conversations, started + timedelta(seconds=i))
        originals.append(record)
        out.append(record)
    return Workload(out)


def _original(n: int, rng: random.Random, conversations: int, at: datetime) -> Record:
    webhook_id = f"wh-{BASE_TAG.decode()}-{n:08d}"
    conversation = rng.randrange(conversations)
    display, phone_number_id = _BUSINESSES[conversation % len(_BUSINESSES)]
    wa_id = f"3161{conversation:08d}"
    wamid = f"wamid.HBgMMzE2MTAwMDAwMDAwFQIAEhgg{BASE_TAG.decode()}{n:08d}QzE2MTAwMDAwMDAwAA=="
    text = " ".join(rng.choice(_WORDS) for _ in range(60))[:350]
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": display,
                                "phone_number_id": phone_number_id,
                            },
                            "contacts": [
                                {"profile": {"name": f"Customer {conversation}"}, "wa_id": wa_id}
                            ],
                            "messages": [
                                {
                                    "from": wa_id,
                                    "id": wamid,
                                    "timestamp": str(int(at.timestamp())),
                                    "type": "text",
                                    "text": {"body": text},
                                }
                            ],
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }
    headers = {
        "content-type": "application/json",
        "user-agent": "facebookexternalua",
        "x-hub-signature-256": "sha256=" + f"{rng.getrandbits(256):064x}",
    }
    envelope = {"id": webhook_id, "headers": headers, "body": body, "timestamp": at.isoformat()}
    value = json.dumps(envelope, separators=(",", ":")).encode()
    return Record(webhook_id.encode(), value, True)
