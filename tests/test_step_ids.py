"""Recovery written before the code moved into one package (issue 12) resumes on this layout.

Snapshots are keyed by step id (the flow's name included), so the ids are pinned: a renamed
step orphans recovered state, Kafka offsets and pending retries too. And the conversation
state inside them is a pickle naming its classes by their old module path, which must still
load, as the same classes.
"""

from __future__ import annotations

import base64
import pickle
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.test_conversation import FakeSubmitter
from wa_worker import dataflow
from wa_worker.core.services import Services
from wa_worker.operators.backoff import BackoffPolicy
from wa_worker.operators.conversation import (
    ConversationLogic,
    ConversationPolicy,
    ConversationState,
    Phase,
)
from wa_worker.operators.inbound import inbound_source
from wa_worker.settings import load_settings
from wa_worker.sinks.kafka_sink import KafkaOutcomeSink

PINNED = [
    "wa-worker.by-conversation",
    "wa-worker.by-conversation.map",
    "wa-worker.by-conversation.map.flat_map_batch",
    "wa-worker.by-shard",  # stateless, like by-conversation
    "wa-worker.by-shard.map",
    "wa-worker.by-shard.map.flat_map_batch",
    "wa-worker.claim-early",  # stateless (added later: no recovered state names it)
    "wa-worker.completions",
    "wa-worker.consumer-errors",
    "wa-worker.consumer-errors.flat_map_batch",
    "wa-worker.events-and-results",
    "wa-worker.handle",  # the conversations' state: claims, retries (once the window too)
    "wa-worker.inbound",  # Kafka offsets
    "wa-worker.kafka-out",
    "wa-worker.outcomes",
    "wa-worker.parse",
    "wa-worker.readable",
    "wa-worker.reorder-window",  # its shards' held events (added later than the rest)
    "wa-worker.to-records",
    "wa-worker.to-records.flat_map_batch",
    "wa-worker.unkey",
    "wa-worker.unkey.map",
    "wa-worker.unkey.map.flat_map_batch",
    "wa-worker.unshard",
    "wa-worker.unshard.map",
    "wa-worker.unshard.map.flat_map_batch",
    "wa-worker.valid",
]


def _step_ids(step: Any) -> list[str]:
    return [step.step_id, *(i for sub in getattr(step, "substeps", []) for i in _step_ids(sub))]


def test_the_worker_flow_keeps_its_step_ids() -> None:
    # The worker's flow as worker_flow() builds it, without its process start-up.
    settings = load_settings(kafka_brokers="127.0.0.1:9")
    services = Services.create(settings)
    source = inbound_source(settings, services.drain, services.hold_input, services.positions)
    sink = KafkaOutcomeSink(settings.producer_config(), services.runtime, 1.0)
    flow = dataflow.build("wa-worker", services, source, ("kafka-out", sink))
    assert sorted(i for step in flow.substeps for i in _step_ids(step)) == PINNED


def test_importing_the_dataflow_has_no_side_effects() -> None:
    # `flow` is made on first access only (then settings, Kafka, signals, the health port).
    assert "flow" not in vars(dataflow)


# A conversation's state as the landed main before this layout (16923f6) snapshotted it: a
# retry waiting (attempts 2, due 09:00) and a queued event behind it. Its pickle names the
# classes `operators.conversation.*`.
OLD_STATE = Path(__file__).parent / "data" / "conversation-state-16923f6.pickle.b64"


def test_a_snapshot_of_the_old_layout_resumes_with_this_layouts_classes() -> None:
    state = pickle.loads(base64.b64decode(OLD_STATE.read_text()))
    assert type(state) is ConversationState  # the package's class, not a second copy
    retry, queued = state.queue
    assert retry.phase is Phase.CLAIM and retry.retry_waiting and retry.attempts == 2
    assert queued.event.event_key == "wamid.queued"
    submit = FakeSubmitter()
    policy = ConversationPolicy(BackoffPolicy(1000, 60_000, 0.0, 3), 30_000, 10.0)
    now = datetime(2026, 12, 1, 9, 0, 1, tzinfo=UTC)
    logic = ConversationLogic(lambda e: e.conversation_key, submit, policy, state, lambda: now)
    assert logic.notify_at() == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # kept its time
    logic.on_notify()
    assert [key for key, _token in submit.claims] == ["wamid.retrying"]


def test_the_old_name_is_the_same_module_outside_a_checkout(tmp_path: Path) -> None:
    # Where no top-level `operators` exists (an installed wheel), unpickling still finds it.
    code = (
        "import base64, pickle, sys; import wa_worker.operators.conversation as c; "
        f"s = pickle.loads(base64.b64decode(open({str(OLD_STATE)!r}).read())); "
        "assert type(s) is c.ConversationState; "
        "assert sys.modules['operators.conversation'] is c; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "ok", result.stderr
