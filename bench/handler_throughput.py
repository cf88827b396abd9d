"""Throughput with a slow handler: wa-worker against a hand-written sequential consumer.

    .venv/bin/python -m bench.handler_throughput [--events 2000] [--handler-ms 50]

Both read the same pre-loaded webhooks from a real Kafka broker, dedupe in a real Redis, call
the same local HTTP handler (bench/handler_peer.go, sleeping --handler-ms per call) and write
to a processed topic.
The baseline is the loop a team writes first: poll, SET NX, POST, produce, one at a time.
Throughput is measured between the first and last processed record's broker timestamps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis
from confluent_kafka import Consumer, Producer

from tests.support.kafka import produce, read_topic
from tests.support.webhooks import conversation_webhook
from tests.support.worker import ROOT, WorkerProcess


def _stack() -> tuple[str, str]:
    os.environ.setdefault("DEVSTACK_DIR", str(ROOT / ".stack" / "bench"))
    from wa_worker import devstack

    return (
        f"127.0.0.1:{devstack.start_kafka(0)}",
        f"redis://127.0.0.1:{devstack.start_redis(0)}/0",
    )


def _topics(brokers: str, tag: str) -> tuple[str, str, str]:
    from wa_worker.devstack import create_topics

    names = (f"b{tag}.inbound", f"b{tag}.processed", f"b{tag}.dlq")
    create_topics(brokers, list(names), partitions=3)
    return names


def _load(brokers: str, topic: str, events: int) -> None:
    per_webhook = 2
    produce(
        brokers,
        topic,
        [
            (
                f"w{i}".encode(),
                conversation_webhook(
                    f"w{i}", f"316{i % 500:05d}", [f"wamid.{i}.{j}" for j in range(per_webhook)]
                ),
            )
            for i in range(events // per_webhook)
        ],
    )


def _rate(records: list, count: int) -> float:  # type: ignore[type-arg]
    stamps = sorted(r.timestamp for r in records)
    span = (stamps[-1] - stamps[0]) / 1000
    return (count - 1) / span if span > 0 else float("inf")


def run_baseline(brokers: str, redis_url: str, handler_url: str, events: int) -> float:
    inbound, processed, _ = _topics(brokers, uuid.uuid4().hex[:8])
    _load(brokers, inbound, events)
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([inbound])
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    store = redis.Redis.from_url(redis_url)
    client = httpx.Client(timeout=10)
    prefix, done = f"base{uuid.uuid4().hex[:6]}:", 0
    while done < events:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        envelope = json.loads(msg.value() or b"{}")
        for change in envelope["body"]["entry"][0]["changes"]:
            for message in change["value"].get("messages", []):
                if not store.set(prefix + message["id"], 1, nx=True, ex=86400):
                    continue
                client.post(
                    handler_url,
                    json={"event_key": message["id"], "conversation_key": message["from"]},
                    headers={"Idempotency-Key": message["id"]},
                ).raise_for_status()
                producer.produce(processed, json.dumps(message).encode())
                producer.flush()
                done += 1
        consumer.commit(message=msg, asynchronous=False)
    consumer.close()
    return _rate(_timestamps(brokers, processed, events), events)


def _timestamps(brokers: str, topic: str, count: int) -> list:  # type: ignore[type-arg]
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    out: list = []  # type: ignore[type-arg]
    deadline = time.monotonic() + 120
    while len(out) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            out.append(_Stamp(msg.timestamp()[1]))
    consumer.close()
    return out


class _Stamp:
    def __init__(self, timestamp: int) -> None:
        self.timestamp = timestamp


def run_worker(
    brokers: str, redis_url: str, handler_url: str, events: int, concurrency: int
) -> float:
    inbound, processed, dlq = _topics(brokers, uuid.uuid4().hex[:8])
    _load(brokers, inbound, events)
    with tempfile.TemporaryDirectory() as tmp:
        worker = WorkerProcess(
            {
                "KAFKA_BROKERS": brokers,
                "REDIS_URL": redis_url,
                "HANDLER_URL": handler_url,
                "KAFKA_INBOUND_TOPIC": inbound,
                "KAFKA_PROCESSED_TOPIC": processed,
                "KAFKA_DLQ_TOPIC": dlq,
                "REDIS_KEY_PREFIX": f"bw{uuid.uuid4().hex[:6]}:",
                "HANDLER_CONCURRENCY": str(concurrency),
                "LOG_LEVEL": "WARNING",
                "HEALTH_PORT": "0",
            },
            Path(tmp) / "recovery",
            Path(tmp) / "worker.log",
        ).start()
        try:
            records = read_topic(
                brokers, processed, until=lambda rs: len(rs) >= events, timeout_s=600, settle_s=0.1
            )
        finally:
            worker.stop()
    if len(records) < events:
        raise RuntimeError(f"only {len(records)} of {events} processed")
    return _rate(_timestamps(brokers, processed, events), events)


@contextlib.contextmanager
def handler_peer(delay_ms: int) -> Iterator[str]:
    """The Go peer in bench/handler_peer.go: a Python test server would be the bottleneck."""
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "handler_peer"
        subprocess.run(
            ["go", "build", "-o", str(binary), "handler_peer.go"],
            cwd=Path(__file__).parent,
            check=True,
        )
        proc = subprocess.Popen(
            [str(binary), "-delay", f"{delay_ms}ms"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            yield proc.stdout.readline().strip()
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--handler-ms", type=int, default=50)
    args = parser.parse_args()
    brokers, redis_url = _stack()
    with handler_peer(args.handler_ms) as url:
        baseline_events = min(args.events, 400)  # sequential: keep its run short
        rows = [
            (
                "hand-written sequential consumer",
                baseline_events,
                run_baseline(brokers, redis_url, url, baseline_events),
            ),
            (
                "wa-worker, HANDLER_CONCURRENCY=1",
                baseline_events,
                run_worker(brokers, redis_url, url, baseline_events, 1),
            ),
            (
                "wa-worker, HANDLER_CONCURRENCY=64",
                args.events,
                run_worker(brokers, redis_url, url, args.events, 64),
            ),
        ]
    print(f"\nhandler latency {args.handler_ms} ms, 500 conversations, 1 worker process")
    print(f"{'runner':<38}{'events':>8}{'events/s':>12}")
    for name, count, rate in rows:
        print(f"{name:<38}{count:>8}{rate:>12.1f}")


if __name__ == "__main__":
    main()
