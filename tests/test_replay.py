"""`wa-worker replay FILE`: the dataflow offline on a file, with the real Redis or without."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from devtools.handler_server import HandlerServer, Reply
from devtools.kafka import produce, read_topic
from devtools.webhooks import (
    conversation_webhook,
    envelope,
    messages_value,
    payload,
    text_message,
)
from devtools.worker import ROOT, WorkerProcess
from tests.conftest import Stack, Topics
from tests.support.cli import run_cli
from tests.support.markers import marker_state
from wa_worker.core.dedupe import MarkerState
from wa_worker.models.capture_file import FileLine, LineKind, read_line
from wa_worker.sinks.file_sink import FileRecord

WEBHOOKS = 60  # two messages each; every 10th delivered twice under a new webhook id


def write_capture(path: Path) -> tuple[set[str], dict[str, int]]:
    """The file, the unique event keys in it, and the line numbers of the bad lines."""
    lines: list[bytes] = []
    unique: set[str] = set()
    for i in range(WEBHOOKS):
        wa_id, wamids = f"3162{i % 7:04d}", [f"wamid.{i}.{j}" for j in range(2)]
        unique.update(wamids)
        lines.append(conversation_webhook(f"w{i}", wa_id, wamids))
        if i % 10 == 0:
            lines.append(conversation_webhook(f"w{i}r", wa_id, wamids))
    bad: dict[str, int] = {}
    lines.append(b"")
    lines.append(b"not json at all")
    bad["not_json"] = len(lines)
    lines.append(envelope("w-page", {"object": "page", "entry": [{"id": "1", "changes": []}]}))
    bad["poison"] = len(lines)
    lines.append(b"[1, 2, 3]")
    bad["array"] = len(lines)
    bare = payload(messages_value(messages=[text_message("wamid.bare", "31699")], wa_id="31699"))
    lines.append(json.dumps(bare).encode())
    unique.add("wamid.bare")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return unique, bad


def replay(env: dict[str, str], path: Path, out: Path, *args: str) -> tuple[dict[str, Any], str]:
    result = run_cli(
        env, "replay", str(path), "-o", str(out), "--json", *args, module="wa_worker", timeout=180
    )
    return json.loads(result.stdout), result.stderr


def read_records(path: Path) -> list[FileRecord]:
    return [FileRecord.model_validate_json(line) for line in path.read_text().splitlines()]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(redis_url: str, redis_prefix: str, handler_url: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "HANDLER_URL": handler_url,
        "RETRY_DELAY_MS": "100",
        "MAX_RETRIES": "3",
        "KAFKA_BROKERS": f"127.0.0.1:{closed_port()}",  # no Kafka needed
    }


@pytest.mark.parametrize("dedupe", ["redis", "memory"])
def test_replay_processes_each_unique_event_once_and_dead_letters_bad_lines(
    stack: Stack, redis_prefix: str, tmp_path: Path, dedupe: str
) -> None:
    capture = tmp_path / "capture.jsonl"
    unique, bad = write_capture(capture)
    redis_url = stack.redis_url if dedupe == "redis" else f"redis://127.0.0.1:{closed_port()}/0"
    with HandlerServer() as handler:
        summary, stderr = replay(
            base_env(redis_url, redis_prefix, handler.url), capture, tmp_path / "out"
        )

    processed = read_records(tmp_path / "out" / "processed.jsonl")
    keys = Counter(r.headers["wa-event-key"] for r in processed)
    assert set(keys) == unique and max(keys.values()) == 1
    assert Counter(c.event_key for c in handler.calls) == Counter(unique)
    first = json.loads(processed[0].raw_value())
    assert first["result"]["ok"] is True and first["attempts"] == 1
    assert processed[0].key == first["conversation_key"]

    dlq = {int(r.headers["wa-source-offset"]): r for r in read_records(tmp_path / "out/dlq.jsonl")}
    assert sorted(dlq) == sorted(bad.values())  # offsets are the file's line numbers
    assert dlq[bad["not_json"]].raw_value() == b"not json at all"
    assert dlq[bad["not_json"]].headers["wa-error-class"] == "invalid_json"
    assert dlq[bad["poison"]].headers["wa-error-class"] == "invalid_payload"
    assert "object is 'page'" in dlq[bad["poison"]].headers["wa-error-reason"]
    assert dlq[bad["array"]].headers["wa-error-class"] == "invalid_envelope"
    assert all(r.headers["wa-source-topic"] == str(capture) for r in dlq.values())

    redelivered = 2 * (WEBHOOKS // 10)
    assert summary["lines"] == WEBHOOKS + WEBHOOKS // 10 + 5
    assert summary["blank_lines"] == 1
    # The envelope lines (the poison one and the bare body wrapped included), not the bad ones.
    assert summary["envelopes"] == WEBHOOKS + WEBHOOKS // 10 + 2
    assert (summary["bare_bodies"], summary["kafka_records"]) == (1, 0)
    assert (summary["bad_lines"], summary["not_json"]) == (2, 1)
    assert [note.split(": ")[0] for note in summary["bad"]] == [
        f"{capture}:{bad['not_json']}",
        f"{capture}:{bad['array']}",
    ]
    assert f"replay: bad line {capture}:{bad['not_json']}: not JSON" in stderr
    assert summary["events"] == len(unique) + redelivered
    assert summary["processed"] == len(unique)
    assert summary["duplicates"] == redelivered
    assert summary["dead_lettered"] == {
        "invalid_envelope": 1,
        "invalid_json": 1,
        "invalid_payload": 1,
    }
    assert summary["handler_calls"] == len(unique)
    assert (summary["retried_events"], summary["retries"]) == (0, 0)
    if dedupe == "redis":
        assert "dedupe in Redis" in stderr
    else:
        assert "dedupe in in-process memory" in stderr and "not reachable" in stderr


def test_transient_failures_are_retried_and_a_4xx_is_dead_lettered(
    stack: Stack, redis_prefix: str, tmp_path: Path
) -> None:
    def plan(event: dict[str, Any], attempt: int) -> Reply:
        if event["event_key"] == "wamid.flaky" and attempt <= 2:
            return Reply(503, {"error": "busy"})
        if event["event_key"] == "wamid.reject":
            return Reply(422, {"error": "unknown customer"})
        return Reply(200, {"ok": True})

    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(
        conversation_webhook("w1", "31611", ["wamid.a", "wamid.flaky", "wamid.b"])
        + b"\n"
        + conversation_webhook("w2", "31622", ["wamid.reject", "wamid.c"])
        + b"\n"
    )
    with HandlerServer(plan) as handler:
        summary, _ = replay(
            base_env(stack.redis_url, redis_prefix, handler.url), capture, tmp_path / "out"
        )

    processed = {
        r.headers["wa-event-key"]: r for r in read_records(tmp_path / "out/processed.jsonl")
    }
    assert set(processed) == {"wamid.a", "wamid.flaky", "wamid.b", "wamid.c"}
    flaky = json.loads(processed["wamid.flaky"].raw_value())
    assert (flaky["attempts"], flaky["retries"]) == (3, 2)
    assert processed["wamid.flaky"].headers["wa-attempts"] == "3"
    # Order within the conversation held: wamid.b waited for wamid.flaky's retries.
    calls = [c.event_key for c in handler.calls if c.conversation_key.endswith("31611")]
    assert calls == ["wamid.a", "wamid.flaky", "wamid.flaky", "wamid.flaky", "wamid.b"]

    (rejected,) = read_records(tmp_path / "out/dlq.jsonl")
    assert rejected.headers["wa-error-class"] == "handler_permanent"
    assert rejected.headers["wa-event-key"] == "wamid.reject"
    assert rejected.headers["wa-status-code"] == "422"
    assert 'HTTP 422: {"error":"***"}' in rejected.headers["wa-error-reason"]  # strings masked
    assert rejected.headers["wa-source-offset"] == "2"
    assert json.loads(rejected.raw_value())["id"] == "w2"  # the original envelope

    assert summary["processed"] == 4
    assert summary["dead_lettered"] == {"handler_permanent": 1}
    assert (summary["retried_events"], summary["retries"]) == (1, 2)
    assert summary["handler_calls"] == 7


def test_second_replay_against_the_same_redis_is_all_duplicates(
    stack: Stack, redis_prefix: str, tmp_path: Path
) -> None:
    capture = tmp_path / "capture.jsonl"
    unique, bad = write_capture(capture)
    with HandlerServer() as handler:
        env = base_env(stack.redis_url, redis_prefix, handler.url)
        first, _ = replay(env, capture, tmp_path / "first")
        second, _ = replay(env, capture, tmp_path / "second")
        repeated = [
            c for c in handler.calls if [d.event_key for d in handler.calls].count(c.event_key) > 1
        ]
        info = (
            [(c.event_key, c.attempt, round(c.at, 3)) for c in repeated],
            {k: first[k] for k in ("processed", "duplicates", "handler_calls")},
            {k: second[k] for k in ("processed", "duplicates", "handler_calls")},
        )
        assert len(handler.calls) == len(unique), str(info)  # the second run called nothing

    assert first["processed"] == len(unique)
    assert second["processed"] == 0 and second["handler_calls"] == 0
    assert second["duplicates"] == second["events"] == first["events"]
    assert (tmp_path / "second/processed.jsonl").read_bytes() == b""
    # Bad lines have no event to remember: they are dead-lettered again.
    assert second["dead_lettered"] == first["dead_lettered"]
    assert len(read_records(tmp_path / "second/dlq.jsonl")) == len(bad)


def test_replay_is_reachable_as_a_module_and_prints_a_summary_table(
    stack: Stack, tmp_path: Path
) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(conversation_webhook("w1", "31611", ["wamid.t1"]) + b"\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wa_worker.replay",
            str(capture),
            "-o",
            str(tmp_path / "o"),
            "--in-memory",
        ],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": stack.redis_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "dedupe in in-process memory; --in-memory" in result.stderr
    for row in ("lines read", "events", "processed", "duplicates", "dead-lettered", "elapsed"):
        assert row in result.stdout


def test_line_records_wrap_bare_bodies_byte_for_byte() -> None:
    bare = b'{"object": "whatsapp_business_account", "entry": [], "n": 12345678901234567890.10}'
    line = read_line(bare, 7, "day")
    assert line.kind is LineKind.BARE_BODY and line.key == b"replay-day-7"
    assert line.value is not None
    wrapped = json.loads(line.value)
    assert wrapped["id"] == "replay-day-7" and wrapped["headers"] == {}
    assert line.value.endswith(b'"body": ' + bare + b"}")  # the body's bytes are untouched
    enveloped = b'{"id": "w1", "body": {"object": "x"}}'
    assert read_line(enveloped, 1, "day") == FileLine(1, LineKind.ENVELOPE, enveloped, b"w1")
    assert read_line(b'{"id": "w1"}', 1, "day").kind is LineKind.BAD  # no body
    assert read_line(b"{oops", 1, "day").value == b"{oops"


def test_a_default_replay_leaves_the_running_workers_dedupe_alone(
    stack: Stack,
    topics: Topics,
    redis_client: redis.Redis,
    redis_prefix: str,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    """Replaying with the worker's own settings and no flags must not mark its events done:
    the same webhook reaching the worker afterwards is handled, not dropped as a duplicate."""
    webhook = conversation_webhook("w-fresh", "31655", ["wamid.fresh"])
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_bytes(webhook + b"\n")
    with HandlerServer() as handler:
        env = {**worker_env, "HANDLER_URL": handler.url}
        summary, stderr = replay(env, fresh, tmp_path / "out")
        assert summary["processed"] == 1
        assert f"prefix '{redis_prefix}replay:'" in stderr
        assert marker_state(redis_client, redis_prefix, "wamid.fresh") is MarkerState.ABSENT

        worker = start_worker(HANDLER_URL=handler.url)
        produce(stack.brokers, topics.inbound, [(b"w-fresh", webhook)])
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= 1, timeout_s=90
        )
        assert worker.running(), worker.log()
    assert [r.header("wa-event-key") for r in processed] == ["wamid.fresh"]
    assert [c.event_key for c in handler.calls] == ["wamid.fresh", "wamid.fresh"]


def test_replay_shares_the_workers_dedupe_only_when_given_its_prefix(
    stack: Stack, redis_client: redis.Redis, redis_prefix: str, tmp_path: Path
) -> None:
    capture = tmp_path / "day.jsonl"
    capture.write_bytes(conversation_webhook("w1", "31611", ["wamid.shared"]) + b"\n")
    with HandlerServer() as handler:
        env = base_env(stack.redis_url, redis_prefix, handler.url)
        summary, stderr = replay(env, capture, tmp_path / "o", "--dedupe-prefix", redis_prefix)
    assert summary["processed"] == 1
    assert "the worker's own" in stderr
    assert marker_state(redis_client, redis_prefix, "wamid.shared") is MarkerState.PROCESSED
    refused = run_cli(
        env, "replay", str(capture), "--dedupe-prefix", "", module="wa_worker", check=False
    )
    assert refused.returncode == 2 and "--dedupe-prefix" in refused.stderr


def test_a_handler_callable_that_cannot_be_loaded_stops_replay_with_one_line(
    stack: Stack, redis_prefix: str, tmp_path: Path
) -> None:
    capture = tmp_path / "day.jsonl"
    capture.write_bytes(conversation_webhook("w1", "31611", ["wamid.one"]) + b"\n")
    env = {**base_env(stack.redis_url, redis_prefix, ""), "HANDLER_CALLABLE": "no_such_mod:handle"}
    result = run_cli(env, "replay", str(capture), "-o", str(tmp_path / "o"), check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "wa-worker: invalid setting HANDLER_CALLABLE: cannot load 'no_such_mod:handle': "
        "No module named 'no_such_mod'"
    ]
