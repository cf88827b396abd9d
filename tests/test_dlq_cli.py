"""`wa-worker dlq inspect | redrive` and `wa-worker publish`, on the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Stack, Topics
from tests.support.handler_server import HandlerServer, Reply
from tests.support.kafka import produce, read_topic
from tests.support.webhooks import conversation_webhook, messages_value, payload, text_message
from tests.support.worker import ROOT, WorkerProcess


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "wa_worker.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_inspect_then_redrive_a_rejected_event(
    stack: Stack,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
) -> None:
    accept = {"bad": False}

    def plan(event: dict[str, Any], attempt: int) -> Reply:
        if event["event_key"] == "wamid.bad" and not accept["bad"]:
            return Reply(422, {"error": "unknown customer"})
        return Reply(200, {"ok": True})

    produce(
        stack.brokers,
        topics.inbound,
        [(b"w1", conversation_webhook("w1", "31612", ["wamid.good", "wamid.bad"]))],
    )
    with HandlerServer(plan) as handler:
        start_worker(HANDLER_URL=handler.url)
        read_topic(stack.brokers, topics.dlq, until=lambda rs: len(rs) >= 1, timeout_s=60)

        listing = cli(worker_env, "dlq", "inspect", "--json")
        (row,) = [json.loads(line) for line in listing.stdout.splitlines()]
        assert row["event-key"] == "wamid.bad" and row["error-class"] == "handler_permanent"
        assert "unknown customer" in row["error-reason"]
        assert "1 dead letters" in listing.stderr

        assert "would re-drive 1" in cli(worker_env, "dlq", "redrive", "--dry-run").stdout
        accept["bad"] = True
        cli(worker_env, "dlq", "redrive", "--class", "handler_permanent")
        processed = read_topic(
            stack.brokers, topics.processed, until=lambda rs: len(rs) >= 2, timeout_s=60
        )
    keys = Counter(r.header("wa-event-key") for r in processed)
    assert keys == {"wamid.good": 1, "wamid.bad": 1}  # the good one was not processed again
    assert [c.event_key for c in handler.calls].count("wamid.good") == 1


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
    assert "published 2 webhooks" in cli(worker_env, "publish", str(capture)).stdout
    start_worker()
    processed = read_topic(
        stack.brokers, topics.processed, until=lambda rs: len(rs) >= 2, timeout_s=60
    )
    assert sorted(str(r.header("wa-event-key")) for r in processed) == ["wamid.r1", "wamid.r2"]
