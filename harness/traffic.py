"""What the harness sends: webhooks over many conversations, redeliveries and poison."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer

from devtools.webhooks import envelope, messages_value, payload, status, text_message

POISON_SHAPES = [
    b"not json",
    b'{"id": "p", "headers": {}}',
    b'{"id": 5, "body": {}, "headers": {}}',
    b"[]",
    b'{"id": "p", "body": {"object": "page", "entry": [{"id": "1", "changes": []}]}}',
    b'{"id": "p", "body": "{\\"object\\": \\"whatsapp_business_account\\", \\"entry\\": ["}',
]


@dataclass
class Traffic:
    records: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value), in order
    unique_events: set[str] = field(default_factory=set)
    poison: list[bytes] = field(default_factory=list)


def build(
    webhooks: int,
    conversations: int = 50,
    redelivery_share: float = 0.1,
    poison: int = 6,
    seed: int = 7,
) -> Traffic:
    """Webhooks of 1-3 messages and sometimes a status; a share sent again later under a new
    webhook id (Meta redelivers); poison spread through the stream."""
    rng = random.Random(seed)
    traffic = Traffic()
    redeliveries: list[tuple[int, bytes]] = []
    for i in range(webhooks):
        wa_id = f"3169{rng.randrange(conversations):05d}"
        messages = [text_message(f"wamid.h{i}.{j}", wa_id, "hi") for j in range(rng.randint(1, 3))]
        statuses = [status(f"wamid.out{i}", wa_id, "delivered")] if rng.random() < 0.3 else []
        body = payload(messages_value(messages=messages, statuses=statuses, wa_id=wa_id))
        traffic.unique_events.update(m["id"] for m in messages)
        traffic.unique_events.update(f"{s['id']}:{s['status']}" for s in statuses)
        traffic.records.append((f"w{i}".encode(), envelope(f"w{i}", body)))
        if rng.random() < redelivery_share:
            redeliveries.append((i + rng.randint(1, 50), envelope(f"w{i}-again", body)))
        while redeliveries and redeliveries[0][0] <= i:
            _, value = redeliveries.pop(0)
            traffic.records.append((b"again", value))
    traffic.records.extend((b"again", value) for _, value in redeliveries)
    for n in range(poison):
        value = POISON_SHAPES[n % len(POISON_SHAPES)] + b" " * n  # each poison distinct
        traffic.poison.append(value)
        traffic.records.insert(rng.randrange(len(traffic.records)), (f"poison{n}".encode(), value))
    return traffic


class SteadyProducer:
    """Sends records at a steady rate from a thread; survives a broker outage (librdkafka
    buffers and retries)."""

    def __init__(
        self,
        brokers: str,
        topic: str,
        records: list[tuple[bytes, bytes]],
        rate_per_s: float,
        config: Mapping[str, Any] | None = None,  # a SASL_SSL cluster's options
    ) -> None:
        self._producer = Producer(
            {
                **(config or {}),
                "bootstrap.servers": brokers,
                "enable.idempotence": True,
                "message.max.bytes": 5_242_880,
                "linger.ms": 5,
                "message.timeout.ms": 300_000,
                "log_level": 0,
            }
        )
        self._topic = topic
        self._records = records
        self._interval = 1 / rate_per_s
        self.failures: list[str] = []
        self.ended_at: float | None = None  # wall-clock time of the last produce call
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SteadyProducer:
        self._thread.start()
        return self

    def _run(self) -> None:
        def on_delivery(err: object, _msg: object) -> None:
            if err is not None:
                self.failures.append(str(err))

        started = time.monotonic()
        for n, (key, value) in enumerate(self._records):
            delay = started + n * self._interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            while True:
                try:
                    self._producer.produce(self._topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:
                    self._producer.poll(0.1)
            self._producer.poll(0)
        self.ended_at = time.time()
        while self._producer.flush(5):
            pass

    def join(self, timeout_s: float = 600) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive() or self.failures:
            raise RuntimeError(f"producer did not deliver everything: {self.failures[:3]}")
