"""`wa-worker dlq list | show | redrive` and `wa-worker publish`, on the real stack."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
from confluent_kafka import Producer

from devtools.devstack import free_port
from devtools.handler_server import HandlerServer, Reply
from devtools.kafka import produce, read_topic
from devtools.webhooks import conversation_webhook, messages_value, payload, text_message
from devtools.worker import WorkerProcess
from tests.conftest import Stack, Topics
from tests.support.cli import run_cli
from wa_worker.core.redis_client import redis_client
from wa_worker.settings import load_settings


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(env, *args)


def rows(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    listing = cli(env, "dlq", "list", "--json", *args)
    return [json.loads(line) for line in listing.stdout.splitlines()]


def duplicates(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.search(r"^wa_events_duplicates_total (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_until(check: Callable[[], bool], timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_list_show_and_redrive_an_event_once(
    stack: Stack,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
) -> None:
    accept = {"bad": False}

    def plan(event: dict[str, Any], attempt: int) -> Reply:
        if event["event_key"] == "wamid.bad" and not accept["bad"]:
            # Plain text: the reason keeps it (a JSON body's strings would be masked).
            return Reply(422, raw=b"unknown customer", content_type="text/plain")
        return Reply(200, {"ok": True})

    produce(
        stack.brokers,
        topics.inbound,
        [
            (b"w1", conversation_webhook("w1", "31612345678", ["wamid.good", "wamid.bad"])),
            (b"junk", b"{not json"),
        ],
    )
    port = free_port()
    with HandlerServer(plan) as handler:
        start_worker(HANDLER_URL=handler.url, HEALTH_PORT=str(port))
        read_topic(stack.brokers, topics.dlq, until=lambda rs: len(rs) >= 2, timeout_s=60)

        # list: filters by class, reason and time; the table carries the reason.
        every = rows(worker_env)
        assert Counter(r["error-class"] for r in every) == {
            "handler_permanent": 1,
            "invalid_json": 1,
        }
        (bad,) = rows(worker_env, "--class", "handler_permanent")
        assert bad["event-key"] == "wamid.bad" and "unknown customer" in bad["error-reason"]
        assert rows(worker_env, "--reason", "UNKNOWN CUSTOMER") == [bad]
        assert len(rows(worker_env, "--since", "1h")) == 2
        assert rows(worker_env, "--until", "1h") == []
        table = cli(worker_env, "dlq", "list", "--reason", "customer")
        assert "unknown customer" in table.stdout and "wamid.bad" in table.stdout
        assert "1 dead letters" in table.stderr
        assert "handler_permanent" in cli(worker_env, "dlq", "inspect").stdout  # old name

        # show: every context header; the body redacted unless asked for.
        ref = f"{bad['partition']}:{bad['offset']}"
        shown = cli(worker_env, "dlq", "show", ref).stdout
        assert "unknown customer" in shown and "source-offset" in shown
        assert "msg wamid.bad" not in shown and "31612345678" not in shown
        assert "***(11 chars)" in shown and '"id": "wamid.bad"' in shown
        full = json.loads(
            cli(worker_env, "dlq", "show", "wamid.bad", "--json", "--show-body").stdout
        )
        assert full["offset"] == bad["offset"]
        assert "msg wamid.bad" in json.dumps(full["envelope"])

        # redrive --dry-run publishes nothing and resets nothing.
        dry = cli(worker_env, "dlq", "redrive", "--class", "handler_permanent", "--dry-run")
        assert "would re-drive 1 records" in dry.stdout and "1 to reset" in dry.stdout
        assert len(read_topic(stack.brokers, topics.inbound)) == 2

        accept["bad"] = True
        first = cli(worker_env, "dlq", "redrive", "--class", "handler_permanent")
        assert "re-drove 1 records" in first.stdout and "1 reset" in first.stdout
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= 2, timeout_s=60
        )
        assert Counter(r.header("wa-event-key") for r in processed) == {
            "wamid.good": 1,
            "wamid.bad": 1,
        }
        # wamid.good rode along in the re-driven webhook and was dropped as a duplicate.
        assert wait_until(lambda: duplicates(port) >= 1)

        # The same dead letter again: the event is done now, so the worker drops it.
        second = cli(worker_env, "dlq", "redrive", "--ref", ref)
        assert "1 already processed" in second.stdout and "0 reset" in second.stdout
        assert wait_until(lambda: duplicates(port) >= 3)  # good and bad, once more each
        processed = read_topic(stack.brokers, topics.processed)

    assert Counter(r.header("wa-event-key") for r in processed) == {
        "wamid.good": 1,
        "wamid.bad": 1,
    }
    assert [c.event_key for c in handler.calls].count("wamid.good") == 1
    assert [c.status for c in handler.calls_for("wamid.bad")] == [422, 200]
    redriven = [r for r in read_topic(stack.brokers, topics.inbound) if r.header("wa-redrive-of")]
    assert [r.header("wa-redrive-of") for r in redriven] == [
        f"{topics.dlq}/{ref.replace(':', '/')}"
    ] * 2
    assert all(r.key == b"w1" and r.header("wa-redrive-at") for r in redriven)


def test_show_reports_a_missing_record_clearly(worker_env: dict[str, str]) -> None:
    result = run_cli(worker_env, "dlq", "show", "0:99", check=False)
    assert result.returncode == 1
    assert "no dead letter 0:99" in result.stderr and "Traceback" not in result.stderr


def test_publish_captured_webhooks(
    stack: Stack,
    topics: Topics,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
) -> None:
    capture = tmp_path / "captured.jsonl"
    bare = payload(messages_value(messages=[text_message("wamid.r1", "3161")], wa_id="3161"))
    enveloped = json.loads(conversation_webhook("w-r2", "3162", ["wamid.r2"]))
    capture.write_text(json.dumps(bare) + "\n\n" + json.dumps(enveloped) + "\n")
    assert "published 2 records" in cli(worker_env, "publish", str(capture)).stdout
    start_worker()
    processed = read_topic(
        stack.brokers, topics.processed, until=lambda rs: len(rs) >= 2, timeout_s=60
    )
    assert sorted(str(r.header("wa-event-key")) for r in processed) == ["wamid.r1", "wamid.r2"]


def dead_letter(brokers: str, topic: str, value: bytes, event_key: str) -> None:
    """A dead letter as the worker writes it (the headers the tools read)."""
    producer = Producer({"bootstrap.servers": brokers, "message.max.bytes": 5_242_880})
    headers: list[tuple[str, str | bytes | None]] = [
        ("wa-event-key", event_key.encode()),
        ("wa-error-class", b"invalid_json"),
        ("wa-error-reason", b"test"),
    ]
    producer.produce(topic, value, event_key.encode(), headers=headers)
    assert producer.flush(30) == 0


def deep_json(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


def test_since_after_every_dead_letter_selects_none(
    stack: Stack, topics: Topics, worker_env: dict[str, str]
) -> None:
    for i in range(4):  # some partitions get records, at least one of three stays empty
        dead_letter(stack.brokers, topics.dlq, b"{}", f"wamid.old{i}")
    assert len(rows(worker_env, "--since", "1h")) == 4
    # No record at or after now: empty, not "from the oldest record".
    assert rows(worker_env, "--since", "0s") == []
    assert rows(worker_env, "--since", "2100-01-01T00:00:00Z") == []
    redrive = cli(worker_env, "dlq", "redrive", "--since", "0s")
    assert "re-drove 0 records" in redrive.stdout
    assert read_topic(stack.brokers, topics.inbound, settle_s=0.5) == []


def test_show_a_dead_letter_nested_too_deep_to_parse(
    stack: Stack, topics: Topics, worker_env: dict[str, str]
) -> None:
    dead_letter(stack.brokers, topics.dlq, deep_json(20_000), "wamid.deep")
    assert [r["event-key"] for r in rows(worker_env)] == ["wamid.deep"]
    shown = run_cli(worker_env, "dlq", "show", "wamid.deep", check=False)
    assert shown.returncode == 0, shown.stderr
    assert "nested too deep to redact" in shown.stdout and "Traceback" not in shown.stderr
    full = run_cli(worker_env, "dlq", "show", "wamid.deep", "--show-body", "--json", check=False)
    assert full.returncode == 0, full.stderr
    assert json.loads(full.stdout)["envelope"] == deep_json(20_000).decode()


def test_publish_sends_what_kafka_accepts_and_names_the_rest(
    stack: Stack, topics: Topics, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    small = [json.loads(conversation_webhook(f"w-s{i}", "3161", [f"wamid.s{i}"])) for i in (1, 2)]
    huge = json.loads(conversation_webhook("w-huge", "3161", ["wamid.huge"]))
    huge["headers"]["padding"] = "x" * 1_100_000  # over message.max.bytes (1 MiB)
    capture = tmp_path / "captured.jsonl"
    capture.write_text("\n".join(json.dumps(e) for e in [small[0], huge, small[1]]) + "\n")
    env = {**worker_env, "KAFKA_MAX_MESSAGE_BYTES": "1048576"}
    result = run_cli(env, "publish", str(capture), check=False)
    assert result.returncode == 1
    # One line of ours (librdkafka may log its own warnings around it).
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("wa-worker:")]
    assert "Traceback" not in result.stderr
    assert "published 2 of 3 records" in line and "1 failed: key w-huge" in line
    sent = read_topic(stack.brokers, topics.inbound, until=lambda rs: len(rs) >= 2)
    assert sorted(r.key or b"" for r in sent) == [b"w-s1", b"w-s2"]


def test_publish_of_json_nested_too_deep_fails_with_one_line(
    topics: Topics, tmp_path: Path, worker_env: dict[str, str]
) -> None:
    capture = tmp_path / "deep.jsonl"
    capture.write_text(deep_json(20_000).decode() + "\n")
    result = run_cli(worker_env, "publish", str(capture), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{capture}:1: JSON nested too deep" in result.stderr


def test_redrive_uses_the_redis_timeout(stack: Stack) -> None:
    settings = load_settings(redis_url=stack.redis_url, redis_timeout_ms=750)
    client = redis_client(settings)
    try:
        assert client.ping()
        assert isinstance(client, redis.Redis)  # REDIS_URL names a standalone Redis
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.75
    finally:
        client.close()


def test_redrive_reports_a_silent_redis_in_one_line(
    stack: Stack, topics: Topics, worker_env: dict[str, str]
) -> None:
    dead_letter(stack.brokers, topics.dlq, b"{}", "wamid.stuck")
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        env = {**worker_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "REDIS_TIMEOUT_MS": "500"}
        result = run_cli(env, "dlq", "redrive", "--dry-run", check=False, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("wa-worker: Redis:") and "Traceback" not in result.stderr


def test_redriving_keyless_dead_letters_twice_does_not_double_them(
    stack: Stack,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
) -> None:
    # No event key: a re-driven copy fails again, and the next re-drive must not send both.
    bad = [json.dumps({"id": f"w-bad{i}", "headers": {}}).encode() for i in range(3)]
    produce(stack.brokers, topics.inbound, [(None, value) for value in bad])
    start_worker()

    def dead_letters(count: int) -> list[Any]:
        found = read_topic(stack.brokers, topics.dlq, until=lambda rs: len(rs) >= count)
        assert len(found) == count
        return found

    dead_letters(3)
    first = cli(worker_env, "dlq", "redrive", "--class", "invalid_envelope")
    assert "re-drove 3 records" in first.stdout, first.stdout
    dead_letters(6)
    dry = cli(worker_env, "dlq", "redrive", "--class", "invalid_envelope", "--dry-run")
    assert "would re-drive 3 records" in dry.stdout, dry.stdout
    second = cli(worker_env, "dlq", "redrive", "--class", "invalid_envelope")
    assert "re-drove 3 records" in second.stdout, second.stdout
    assert "3 copies of the same envelopes skipped" in second.stdout, second.stdout
    found = dead_letters(9)
    assert Counter(r.value for r in found) == {value: 3 for value in bad}
    assert len(rows(worker_env, "--class", "invalid_envelope", "--limit", "0")) == 9


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert line.startswith("wa-worker: ") and "Traceback" not in result.stderr
    return line


def test_an_unknown_class_or_a_missing_record_is_an_error(
    stack: Stack, topics: Topics, worker_env: dict[str, str]
) -> None:
    dead_letter(stack.brokers, topics.dlq, b"{}", "wamid.there")
    for command in ("list", "redrive"):
        line = one_error_line(
            run_cli(worker_env, "dlq", command, "--class", "nosuchclass", check=False)
        )
        assert "unknown --class nosuchclass" in line and "invalid_json" in line
    (there,) = rows(worker_env)
    ref = f"{there['partition']}:{there['offset']}"
    line = one_error_line(
        run_cli(worker_env, "dlq", "redrive", "--ref", ref, "--ref", "0:99999", check=False)
    )
    assert f"no dead letter 0:99999 on {topics.dlq}" in line
    line = one_error_line(run_cli(worker_env, "dlq", "redrive", "--ref", "zero", check=False))
    assert "--ref zero" in line
    assert read_topic(stack.brokers, topics.inbound, settle_s=0.5) == []  # nothing re-driven
    # A known class without records and an existing ref still work.
    assert rows(worker_env, "--class", "bad_signature") == []
    assert "re-drove 1 records" in cli(worker_env, "dlq", "redrive", "--ref", ref).stdout
