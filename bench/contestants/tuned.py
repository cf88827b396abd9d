"""B. The hand-tuned loop: the worker's work for the pass-through handler, without Bytewax.

Per batch of up to 1,000 records: parse with the project's parser, one Redis pipeline claiming
every event (SET NX PX), produce the processed records the worker writes (same JSON and
headers), flush, one pipeline marking the claimed events done, commit. Dead letters (none in
the bench's data) go to the DLQ like the worker's.
"""

from __future__ import annotations

import redis
from confluent_kafka import Message

from bench.contestants.common import Deliveries, arguments, consumer, produce, producer, readable
from wa_worker.models.records import DeadLetter, Processed, SourcePosition, WebhookEvent
from wa_worker.operators.parse import parse_record
from wa_worker.sinks.records import dead_letter_record, processed_record

BATCH = 1000
LEASE_MS = 30_000
TTL_MS = 7 * 24 * 3600 * 1000


def parse(batch: list[Message]) -> tuple[list[WebhookEvent], list[DeadLetter]]:
    events: list[WebhookEvent] = []
    letters: list[DeadLetter] = []
    for msg in batch:
        source = SourcePosition(
            topic=msg.topic() or "", partition=msg.partition() or 0, offset=msg.offset() or 0
        )
        for item in parse_record(msg.value(), source):
            (events if isinstance(item, WebhookEvent) else letters).append(item)  # type: ignore[arg-type]
    return events, letters


def main() -> None:
    args = arguments(__doc__ or "")
    source = consumer(args, f"{args.redis_prefix}tuned")
    sink = producer(args)
    store = redis.Redis.from_url(args.redis_url)
    delivered = Deliveries()
    consumed = 0
    while consumed < args.expect:
        batch = [m for m in source.consume(BATCH, 0.005) if readable(m)]
        if not batch:
            continue
        consumed += len(batch)
        events, letters = parse(batch)
        claims = store.pipeline(transaction=False)
        for event in events:
            claims.set(args.redis_prefix + event.event_key, "claim", nx=True, px=LEASE_MS)
        mine = [e for e, ok in zip(events, claims.execute(), strict=True) if ok]
        for event in mine:
            record = processed_record(Processed(event=event, attempts=1), args.processed)
            produce(sink, record.topic, record.value, record.key, record.headers, delivered)
        for letter in letters:
            record = dead_letter_record(letter, args.dlq, args.inbound)
            produce(sink, record.topic, record.value, record.key, record.headers, delivered)
        delivered.check(sink.flush(60))
        done = store.pipeline(transaction=False)
        for event in mine:
            done.set(args.redis_prefix + event.event_key, "done", px=TTL_MS)
        done.execute()
        source.commit(asynchronous=True)
    source.close()


if __name__ == "__main__":
    main()
