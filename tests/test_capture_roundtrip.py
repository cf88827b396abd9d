"""Capture files on the real stack: `capture`, `publish` and `replay` read and write them by one
rule (wa_worker/models/capture_file.py), and records go round capture → publish byte for byte."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from devtools.handler_server import HandlerServer
from devtools.kafka import read_topic
from devtools.webhooks import conversation_webhook, messages_value, payload, text_message
from tests.conftest import Stack, Topics
from tests.support.cli import run_cli

KafkaRecord = tuple[bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]


def produce_records(brokers: str, topic: str, records: list[KafkaRecord]) -> None:
    producer = Producer({"bootstrap.servers": brokers})
    for key, value, headers in records:
        producer.produce(topic, value, key, headers=list(headers))
    assert producer.flush(30) == 0


def records_on(brokers: str, topic: str, count: int, timeout_s: float = 30) -> list[KafkaRecord]:
    """Every record of the topic as Kafka has it: tombstones as None, headers in order."""
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    found: list[KafkaRecord] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                continue
            raw = msg.headers() or []
            pairs = raw.items() if isinstance(raw, dict) else raw
            headers = tuple((k, v if isinstance(v, bytes) else b"") for k, v in pairs)
            found.append((msg.key(), msg.value(), headers))
    finally:
        consumer.close()
    return found


def envelope_line(webhook_id: str, wamid: str, text: str) -> bytes:
    """An envelope as `jq -c` writes it: one line, characters such as U+2028 unescaped."""
    data = json.loads(conversation_webhook(webhook_id, "3161", [wamid]))
    data["body"]["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = text
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def test_publish_and_replay_take_the_same_lines_and_name_the_same_bad_ones(
    stack: Stack, topics: Topics, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    first = envelope_line("w-a", "wamid.a", "line\u2028separator\u2029and\x85next")
    last = envelope_line("w-b", "wamid.b", "plain")
    bare = json.dumps(
        payload(messages_value(messages=[text_message("wamid.bare", "3161")], wa_id="3161"))
    ).encode()
    no_id = json.dumps({"body": json.loads(bare), "headers": {}}).encode()
    path = tmp_path / "day.jsonl"
    lines = [first, b"", b"\xff\xfe not UTF-8", b"not json", no_id, bare, last]
    path.write_bytes(b"\n".join(lines) + b"\n")
    bad = {3: "not UTF-8", 4: "not JSON", 5: "without id"}

    published = run_cli(worker_env, "publish", str(path), check=False)
    assert published.returncode == 1, published.stderr
    assert "published 3 records" in published.stdout
    notes = [ln for ln in published.stderr.splitlines() if ln.startswith("wa-worker: ")]
    for number, reason in bad.items():
        assert any(ln.startswith(f"wa-worker: {path}:{number}: ") and reason in ln for ln in notes)
    assert "Traceback" not in published.stderr
    sent = read_topic(stack.brokers, topics.inbound, until=lambda rs: len(rs) >= 3)
    by_key = {r.key: r.value for r in sent}
    assert by_key.keys() == {b"w-a", b"w-b", b"replay-day-6"}
    assert (by_key[b"w-a"], by_key[b"w-b"]) == (first, last)  # the lines' bytes, not re-encoded
    assert by_key[b"replay-day-6"].endswith(b'"body": ' + bare + b"}")

    with HandlerServer() as handler:
        env = {**worker_env, "HANDLER_URL": handler.url}
        out = tmp_path / "out"
        replayed = run_cli(env, "replay", str(path), "-o", str(out), "--json", "--in-memory")
    summary = json.loads(replayed.stdout)
    assert sorted(c.event_key for c in handler.calls) == ["wamid.a", "wamid.b", "wamid.bare"]
    dead = [json.loads(ln) for ln in (out / "dlq.jsonl").read_text().splitlines()]
    assert sorted(int(d["headers"]["wa-source-offset"]) for d in dead) == sorted(bad)
    assert [n.split(": ")[0] for n in summary["bad"]] == [f"{path}:{n}" for n in sorted(bad)]
    assert (summary["envelopes"], summary["bad_lines"], summary["blank_lines"]) == (3, 3, 1)


def test_capture_then_publish_puts_back_the_same_records_byte_for_byte(
    stack: Stack, topics: Topics, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    envelope = conversation_webhook("w1", "3161", ["wamid.1"])
    pretty = json.dumps(json.loads(conversation_webhook("w5", "3161", ["wamid.5"])), indent=2)
    original: list[KafkaRecord] = [
        (b"w1", envelope, ()),  # the usual: an envelope keyed by its id
        (b"not-w2", conversation_webhook("w2", "3161", ["wamid.2"]), ()),
        (None, conversation_webhook("w3", "3161", ["wamid.3"]), ()),
        (b"w4", conversation_webhook("w4", "3161", ["wamid.4"]), (("h", b"\xff"), ("h", b"2"))),
        (b"w5", pretty.encode(), ()),
        (b"bare", json.dumps(payload(messages_value())).encode(), ()),
        (b"\xfe-key", b"\xff\x00 not UTF-8", ()),
        (b"junk", b"{not json \xe2\x80\xa8", ()),
        (b"empty", b"", ()),
        (b"tombstone", None, ()),
    ]
    produce_records(stack.brokers, topics.inbound, original)
    assert Counter(records_on(stack.brokers, topics.inbound, len(original))) == Counter(original)

    path = tmp_path / "captured.jsonl"
    captured = run_cli(worker_env, "capture", str(path))
    assert f"captured {len(original)} records" in captured.stdout
    assert "1 envelopes" in captured.stdout

    # Publish the file into another topic: the same records arrive there.
    # The three topics must differ: the processed setting takes the inbound name.
    again = {
        **worker_env,
        "KAFKA_INBOUND_TOPIC": topics.processed,
        "KAFKA_PROCESSED_TOPIC": topics.inbound,
    }
    published = run_cli(again, "publish", str(path))
    assert f"published {len(original)} records" in published.stdout
    assert Counter(records_on(stack.brokers, topics.processed, len(original))) == Counter(original)
