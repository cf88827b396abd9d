"""`wa-worker capture` on the real stack: by offsets and by time, readable by replay."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.kafka import produce, read_topic
from devtools.webhooks import conversation_webhook, messages_value, payload, text_message
from tests.conftest import Stack, Topics
from tests.support.cli import run_cli
from wa_worker.cli.topic_reader import ReadRequest
from wa_worker.models.capture_file import LineKind, read_file


def capture(env: dict[str, str], out: Path, *args: str) -> str:
    return run_cli(env, "capture", str(out), *args).stdout


def lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def webhooks(prefix: str, count: int) -> list[tuple[bytes, bytes]]:
    return [
        (
            f"{prefix}{i}".encode(),
            conversation_webhook(f"{prefix}{i}", "3161", [f"wamid.{prefix}{i}"]),
        )
        for i in range(count)
    ]


def test_capture_by_offsets_keeps_envelopes_and_raw_records(
    stack: Stack, topics: Topics, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    bare = payload(messages_value(messages=[text_message("wamid.bare", "3161")], wa_id="3161"))
    sent = [*webhooks("o", 12), (b"junk", b"{not json"), (b"bare", json.dumps(bare).encode())]
    produce(stack.brokers, topics.inbound, sent)
    on_topic = read_topic(stack.brokers, topics.inbound)

    everything = tmp_path / "all.jsonl"
    summary = capture(worker_env, everything)
    assert "captured 14 records" in summary and "12 envelopes" in summary
    assert "2 other records" in summary and "1 not JSON" in summary
    # Read back as replay and publish read it: the records, byte for byte; the envelopes are
    # lines of their own, the two others kafka_record lines.
    back = list(read_file(everything))
    assert sorted((line.key, line.value) for line in back) == sorted(sent)
    assert Counter(line.kind for line in back) == {LineKind.ENVELOPE: 12, LineKind.RECORD: 2}

    # One partition's offsets [1, 3), and every partition from offset 2.
    part0 = sorted((r for r in on_topic if r.partition == 0), key=lambda r: r.offset)
    assert len(part0) >= 3
    window = tmp_path / "window.jsonl"
    capture(worker_env, window, "--partition", "0", "--from-offset", "0:1", "--to-offset", "0:3")
    assert [(line.key, line.value) for line in read_file(window)] == [
        (r.key, r.value) for r in part0[1:3]
    ]
    tail = tmp_path / "tail.jsonl"
    assert f"captured {sum(r.offset >= 2 for r in on_topic)} records" in capture(
        worker_env, tail, "--from-offset", "2"
    )


def test_capture_by_time_splits_at_the_given_moment(
    stack: Stack, topics: Topics, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    produce(stack.brokers, topics.inbound, webhooks("early", 5))
    time.sleep(1.5)
    middle = datetime.now(UTC).isoformat()
    time.sleep(1.5)
    produce(stack.brokers, topics.inbound, webhooks("late", 7))

    early, late = tmp_path / "early.jsonl", tmp_path / "late.jsonl"
    capture(worker_env, early, "--until", middle)
    capture(worker_env, late, "--since", middle)
    assert sorted(e["id"] for e in lines(early)) == [f"early{i}" for i in range(5)]
    assert sorted(e["id"] for e in lines(late)) == [f"late{i}" for i in range(7)]
    recent = tmp_path / "recent.jsonl"
    assert "captured 12 records" in capture(worker_env, recent, "--since", "10m")


def test_capture_ends_at_the_end_it_saw_while_records_keep_coming(
    stack: Stack, topics: Topics, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    produce(stack.brokers, topics.inbound, webhooks("before", 20))
    stop = threading.Event()

    def keep_producing() -> None:
        n = 0
        while not stop.is_set():
            produce(stack.brokers, topics.inbound, webhooks(f"during{n}-", 5))
            n += 1

    producer = threading.Thread(target=keep_producing, daemon=True)
    producer.start()
    try:
        summary = capture(worker_env, tmp_path / "moving.jsonl")  # returns: it does not follow
    finally:
        stop.set()
        producer.join(30)
    captured = int(summary.split()[1])
    assert captured >= 20
    assert captured < len(read_topic(stack.brokers, topics.inbound))


def test_capture_of_a_missing_topic_fails_with_one_line(
    tmp_path: Path, worker_env: dict[str, str]
) -> None:
    env = {**worker_env, "KAFKA_INBOUND_TOPIC": "no.such.topic"}
    result = run_cli(env, "capture", str(tmp_path / "x.jsonl"), check=False)
    assert result.returncode == 1
    assert "'no.such.topic' does not exist" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_capture_since_after_every_record_captures_none(
    stack: Stack, topics: Topics, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    produce(stack.brokers, topics.inbound, webhooks("old", 4))
    out = tmp_path / "none.jsonl"
    assert "captured 0 records" in capture(worker_env, out, "--since", "0s")
    assert out.read_text() == ""
    assert "captured 0 records" in capture(worker_env, out, "--since", "2100-01-01T00:00:00Z")


def test_capture_keeps_going_past_json_nested_too_deep(
    stack: Stack, topics: Topics, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    deep = b'{"a":' * 20_000 + b"1" + b"}" * 20_000
    produce(stack.brokers, topics.inbound, [*webhooks("d", 3), (b"deep", deep)])
    out = tmp_path / "deep.jsonl"
    summary = capture(worker_env, out)
    assert "captured 4 records" in summary and "3 envelopes" in summary
    assert "1 nested too deep to parse" in summary
    assert deep in [line.value for line in read_file(out)]  # saved as it was


def test_capture_into_a_missing_directory_fails_with_one_line(
    tmp_path: Path, worker_env: dict[str, str]
) -> None:
    result = run_cli(worker_env, "capture", str(tmp_path / "no" / "x.jsonl"), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("wa-worker: No such file or directory")


def test_capture_of_an_empty_offset_range_is_refused_with_one_line(
    tmp_path: Path, worker_env: dict[str, str]
) -> None:
    out = tmp_path / "x.jsonl"
    for args in (
        ("--from-offset", "5", "--to-offset", "3"),
        ("--from-offset", "3", "--to-offset", "3"),
        ("--from-offset", "1:5", "--to-offset", "3"),
        ("--from-offset", "5", "--to-offset", "0:2", "--to-offset", "9"),
    ):
        result = run_cli(worker_env, "capture", str(out), *args, check=False)
        assert result.returncode == 1, (args, result.stdout)
        (line,) = result.stderr.splitlines()
        assert line.startswith("wa-worker: ") and "empty" in line, (args, line)
        assert not out.exists()
    # Ranges that are empty on no partition are fine.
    ok = run_cli(worker_env, "capture", str(out), "--from-offset", "0:5", "--to-offset", "1:3")
    assert "captured 0 records" in ok.stdout


def test_offset_bounds_are_checked_for_the_partitions_read_only() -> None:
    ReadRequest(frozenset({0}), from_offsets={1: 5}, to_offsets={None: 3})  # partition 1 not read
    with pytest.raises(ValueError, match="partition 1: the range is empty"):
        ReadRequest(frozenset({0, 1}), from_offsets={1: 5}, to_offsets={None: 3})
