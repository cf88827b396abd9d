"""C. The naive port of the seed's design: one message at a time, every step waited for.

Per inbound record: poll it, json-parse it, and for each message in it a Redis round trip
(SET NX), the handler call (a no-op function, or a sequential HTTP POST with --handler-url),
a produce and flush; then a synchronous commit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import redis

from bench.contestants.common import Deliveries, arguments, consumer, produce, producer, readable

TTL_S = 7 * 24 * 3600


def messages(envelope: Any) -> Iterator[dict[str, Any]]:
    for entry in envelope["body"]["entry"]:
        for change in entry["changes"]:
            yield from change["value"].get("messages", [])


def noop(_event: dict[str, Any]) -> Any:
    return None


def http_handler(url: str) -> Callable[[dict[str, Any]], Any]:
    client = httpx.Client(timeout=10)

    def call(event: dict[str, Any]) -> Any:
        response = client.post(url, json=event, headers={"Idempotency-Key": event["id"]})
        response.raise_for_status()
        return response.json()

    return call


def main() -> None:
    args = arguments(__doc__ or "")
    source = consumer(args, f"{args.redis_prefix}naive")
    sink = producer(args, **{"linger.ms": 0})  # it flushes every record anyway
    store = redis.Redis.from_url(args.redis_url)
    handle = http_handler(args.handler_url) if args.handler_url else noop
    delivered = Deliveries()
    consumed = 0
    while consumed < args.expect:
        msg = source.poll(0.1)
        if msg is None or not readable(msg):
            continue
        consumed += 1
        envelope = json.loads(msg.value() or b"{}")
        for message in messages(envelope):
            if not store.set(args.redis_prefix + message["id"], 1, nx=True, ex=TTL_S):
                continue  # seen before
            result = handle(message)
            value = {
                "event_key": message["id"],
                "webhook_id": envelope["id"],
                "event": message,
                "result": result,
            }
            headers = [("wa-webhook-id", str(envelope["id"]).encode())]
            produce(sink, args.processed, json.dumps(value).encode(), msg.key(), headers, delivered)
            delivered.check(sink.flush(30))
        source.commit(message=msg, asynchronous=False)
    source.close()


if __name__ == "__main__":
    main()
