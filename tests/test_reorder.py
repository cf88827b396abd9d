"""The reorder window (REORDER_WINDOW_MS) on plain values and as its step's logic: no I/O."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bytewax.testing import TestingSink, TestingSource

from devtools.webhooks import envelope, messages_value, payload, status, text_message
from tests.test_conversation import Backlog, Clock, FakeSubmitter, claimed
from wa_worker import dataflow
from wa_worker.core.services import Services
from wa_worker.errors import ConfigError
from wa_worker.models.records import Processed, WebhookEvent
from wa_worker.operators import reorder
from wa_worker.operators.backoff import BackoffPolicy
from wa_worker.operators.conversation import (
    ConversationLogic,
    ConversationPolicy,
    ConversationState,
)
from wa_worker.operators.finish import FinishTracker
from wa_worker.operators.parse import parse_record
from wa_worker.operators.window import SHARDS, WindowLogic, WindowState, shard_of
from wa_worker.settings import load_settings

WINDOW = timedelta(milliseconds=300)
T0 = 1_700_000_000


def _release(heap: list[reorder.Held], now: datetime, window: timedelta) -> list[WebhookEvent]:
    """The events whose turn has come, in order."""
    return [held.event for held in reorder.due(heap, now, window)]


def message(wamid: str, meta_ts: int, edge: datetime | None = None, wa_id: str = "3161") -> Any:
    """One text message of a conversation, with Meta's timestamp and the edge's receive time."""
    msg = {**text_message(wamid, wa_id), "timestamp": str(meta_ts)}
    data = json.loads(envelope(f"w-{wamid}", payload(messages_value(messages=[msg], wa_id=wa_id))))
    if edge is None:
        del data["timestamp"]  # the edge sent no receive time
    else:
        data["timestamp"] = edge.isoformat()
    raw = json.dumps(data).encode()
    (event,) = parse_record(raw, None)
    assert isinstance(event, WebhookEvent)
    return event


def make(
    resume: ConversationState | None = None,
    clock: Clock | None = None,
    backlog: Backlog | None = None,
) -> tuple[ConversationLogic, FakeSubmitter, Clock]:
    submit, clock = FakeSubmitter(inline=True), clock or Clock()
    policy = ConversationPolicy(BackoffPolicy(1000, 60_000, 0.0, 3), 30_000, 10.0)
    logic = ConversationLogic(
        lambda e: e.conversation_key, submit, policy, resume, clock, backlog=backlog
    )
    return logic, submit, clock


def finish_all(logic: ConversationLogic, submit: FakeSubmitter) -> list[str]:
    """Drive the inline handler: claim after claim, the order in which events start."""
    started: list[str] = []
    while len(submit.claims) > len(started):
        key, token = submit.claims[len(started)]
        started.append(key)
        logic.on_batch([claimed(key, token)])
    return started


# --- the pure window -------------------------------------------------------------------


def test_release_waits_the_window_then_goes_in_meta_timestamp_order() -> None:
    heap: list[reorder.Held] = []
    now = datetime(2026, 1, 1, tzinfo=UTC)
    reorder.hold(heap, message("wamid.late", T0 + 2), now, 0)
    reorder.hold(heap, message("wamid.mid", T0 + 1), now + timedelta(milliseconds=50), 1)
    reorder.hold(heap, message("wamid.early", T0), now + timedelta(milliseconds=100), 2)
    # The front (earliest stamp) arrived last: everything waits for its window.
    assert _release(heap, now + WINDOW, WINDOW) == []
    assert reorder.next_release(heap, WINDOW) == now + timedelta(milliseconds=400)
    released = _release(heap, now + timedelta(milliseconds=400), WINDOW)
    assert [e.event_key for e in released] == ["wamid.early", "wamid.mid", "wamid.late"]
    assert heap == [] and reorder.next_release(heap, WINDOW) is None


def test_ties_go_by_the_edges_receive_time_then_by_arrival() -> None:
    heap: list[reorder.Held] = []
    now = datetime(2026, 1, 1, tzinfo=UTC)
    edge = datetime(2026, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)
    # Same Meta second: the edge saw b before a; c and d have no edge time, in arrival order.
    reorder.hold(heap, message("wamid.a", T0, edge + timedelta(milliseconds=20)), now, 0)
    reorder.hold(heap, message("wamid.b", T0, edge), now, 1)
    reorder.hold(heap, message("wamid.d", T0 + 1), now, 2)
    reorder.hold(heap, message("wamid.c", T0 + 1), now, 3)
    released = _release(heap, now + WINDOW, WINDOW)
    assert [e.event_key for e in released] == ["wamid.b", "wamid.a", "wamid.d", "wamid.c"]


def test_an_event_arriving_after_the_window_is_not_reordered() -> None:
    heap: list[reorder.Held] = []
    now = datetime(2026, 1, 1, tzinfo=UTC)
    reorder.hold(heap, message("wamid.late", T0 + 5), now, 0)
    first = _release(heap, now + WINDOW, WINDOW)
    reorder.hold(heap, message("wamid.early", T0), now + WINDOW + timedelta(milliseconds=1), 1)
    second = _release(heap, now + 2 * WINDOW + timedelta(milliseconds=1), WINDOW)
    assert [e.event_key for e in first + second] == ["wamid.late", "wamid.early"]


def test_a_front_still_waiting_lets_a_later_arrival_stamped_before_it_go_first() -> None:
    """The README's exception: `late` waits for `first`, so `second` (arriving more than the
    window after `late`, but before it is released) still goes before it."""
    heap: list[reorder.Held] = []
    now = datetime(2026, 1, 1, tzinfo=UTC)
    reorder.hold(heap, message("wamid.late", T0 + 5), now, 0)
    reorder.hold(heap, message("wamid.first", T0 + 1), now + 0.9 * WINDOW, 1)
    assert _release(heap, now + WINDOW, WINDOW) == []
    reorder.hold(heap, message("wamid.second", T0 + 2), now + 1.5 * WINDOW, 2)
    released = _release(heap, now + 2.5 * WINDOW, WINDOW)
    assert [e.event_key for e in released] == ["wamid.first", "wamid.second", "wamid.late"]


def test_meta_time_falls_back_to_the_entry_then_the_edge_then_arrival() -> None:
    arrived = datetime(2026, 1, 1, tzinfo=UTC)
    edge = datetime(2025, 6, 1, tzinfo=UTC)
    stamped = message("wamid.s", T0, edge)
    assert reorder.meta_time(stamped, arrived) == T0
    bad = stamped.model_copy(update={"payload": {**stamped.payload, "timestamp": "soon"}})
    assert reorder.meta_time(bad, arrived) == edge.timestamp()
    for odd in (10**400, "1e400", "nan", True, None, {"s": 1}):
        weird = stamped.model_copy(update={"payload": {**stamped.payload, "timestamp": odd}})
        assert reorder.meta_time(weird, arrived) == edge.timestamp(), odd
    entry = bad.model_copy(update={"entry_time": T0 - 9})
    assert reorder.meta_time(entry, arrived) == T0 - 9
    bare = bad.model_copy(update={"received_at": None})
    assert reorder.meta_time(bare, arrived) == arrived.timestamp()
    read = {**status("wamid.o", "3161", "read"), "timestamp": "1700000001"}
    (st,) = parse_record(envelope("w-st", payload(messages_value(statuses=[read]))), None)
    assert isinstance(st, WebhookEvent) and reorder.meta_time(st, arrived) == 1_700_000_001


# --- the window step -------------------------------------------------------------------


def window(
    resume: WindowState | None = None, clock: Clock | None = None, backlog: Backlog | None = None
) -> tuple[WindowLogic, Clock]:
    clock = clock or Clock()
    return WindowLogic(lambda e: e.conversation_key, WINDOW, resume, clock, backlog), clock


def keys(out: Any) -> list[str]:
    return [event.event_key for event in out]


def test_events_arriving_out_of_order_within_the_window_leave_it_in_timestamp_order() -> None:
    backlog = Backlog()
    logic, clock = window(backlog=backlog)
    t = clock.now
    assert logic.on_batch([message("wamid.2", T0 + 2)]) == ([], False)
    clock.advance(0.1)
    out, _ = logic.on_batch([message("wamid.1", T0 + 1), message("wamid.0", T0)])
    assert out == [] and backlog.count == 3  # held events count as in progress
    due = logic.notify_at()
    assert due is not None and due.tzinfo is UTC and due == t + WINDOW
    clock.now = due
    assert logic.on_notify() == ([], False)  # the front arrived later: its own wait is not over
    assert logic.notify_at() == t + timedelta(milliseconds=400)
    clock.now = t + timedelta(milliseconds=400)
    out, discard = logic.on_notify()
    assert keys(out) == ["wamid.0", "wamid.1", "wamid.2"] and discard
    assert backlog.count == 0 and logic.notify_at() is None


def test_the_conversations_of_a_shard_are_released_each_in_its_own_time() -> None:
    logic, clock = window()
    t = clock.now
    logic.on_batch([message("wamid.a1", T0 + 1, wa_id="3161"), message("wamid.b1", T0, wa_id="42")])
    clock.advance(0.2)
    logic.on_batch([message("wamid.b0", T0 - 1, wa_id="42"), message("wamid.c", T0, wa_id="7")])
    clock.now = t + WINDOW
    out, discard = logic.on_notify()
    # b0 is b's front now: b waits for it; a's window is over.
    assert keys(out) == ["wamid.a1"] and not discard
    clock.now = t + WINDOW + timedelta(milliseconds=200)
    out, discard = logic.on_notify()
    assert sorted(keys(out)) == ["wamid.b0", "wamid.b1", "wamid.c"] and discard
    assert keys(out).index("wamid.b0") < keys(out).index("wamid.b1")


def test_a_redelivered_copy_of_a_held_event_goes_on_for_its_conversation_to_drop() -> None:
    backlog = Backlog()
    window_logic, clock = window(backlog=backlog)
    event = message("wamid.a", T0)
    out, discard = window_logic.on_batch([event, event])
    assert out == [] and not discard and backlog.count == 2  # held: the logic must stay
    clock.advance(0.3)
    released, _ = window_logic.on_notify()
    assert keys(released) == ["wamid.a", "wamid.a"] and backlog.count == 0
    logic, submit, _ = make(clock=clock)
    logic.on_batch(list(released))
    assert finish_all(logic, submit) == ["wamid.a"]


def test_a_copy_of_a_held_event_leaves_with_it_and_holds_no_later_event_back() -> None:
    # Held as an event of its own, the copy (its original's earlier stamp, a later arrival)
    # would be the front once its original left, and hold wamid.2 until t + 0.5.
    backlog = Backlog()
    logic, clock = window(backlog=backlog)
    t = clock.now
    first = message("wamid.1", T0 + 1)
    logic.on_batch([first])
    clock.advance(0.1)
    logic.on_batch([message("wamid.2", T0 + 2)])
    clock.advance(0.1)
    assert logic.on_batch([first]) == ([], False) and backlog.count == 3
    clock.now = t + WINDOW
    out, _ = logic.on_notify()
    assert keys(out) == ["wamid.1", "wamid.1"] and backlog.count == 1
    assert logic.notify_at() == t + timedelta(milliseconds=400)
    clock.now = t + timedelta(milliseconds=400)
    out, discard = logic.on_notify()
    assert keys(out) == ["wamid.2"] and discard and backlog.count == 0


def test_a_copy_of_an_event_let_through_lately_goes_on_at_once() -> None:
    logic, clock = window()
    t = clock.now
    first = message("wamid.1", T0 + 1)
    logic.on_batch([first])
    clock.now = t + WINDOW
    assert keys(logic.on_notify()[0]) == ["wamid.1"]
    logic.on_batch([message("wamid.3", T0 + 3)])
    clock.advance(0.05)
    out, discard = logic.on_batch([first])  # a redelivery, after its original went
    assert keys(out) == ["wamid.1"] and not discard  # on to its conversation, to be dropped
    assert logic.notify_at() == t + WINDOW * 2  # wamid.3 waits its own window, no longer


def test_a_held_events_copies_survive_a_snapshot() -> None:
    logic, clock = window()
    event = message("wamid.a", T0)
    logic.on_batch([event, event])
    state = pickle.loads(pickle.dumps(logic.snapshot()))
    backlog = Backlog()
    resumed, _ = window(resume=state, clock=clock, backlog=backlog)
    assert backlog.count == 2
    resumed.on_batch([event])  # another copy after the restart: still its original's
    clock.advance(0.3)
    out, discard = resumed.on_notify()
    assert keys(out) == ["wamid.a"] * 3 and discard and backlog.count == 0


def test_a_window_snapshotted_holding_a_copy_as_its_own_event_resumes_and_releases_both() -> None:
    """Snapshots from before copies were attached to their originals hold them separately."""
    clock = Clock()
    heap: list[reorder.Held] = []
    event = message("wamid.a", T0)
    reorder.hold(heap, event, clock.now, 0)
    reorder.hold(heap, event, clock.now, 1)
    state = pickle.loads(pickle.dumps(WindowState({event.conversation_key: heap}, 2)))
    backlog = Backlog()
    resumed, _ = window(resume=state, clock=clock, backlog=backlog)
    assert backlog.count == 2
    clock.advance(0.3)
    out, discard = resumed.on_notify()
    assert keys(out) == ["wamid.a", "wamid.a"] and discard and backlog.count == 0


def test_held_events_survive_a_snapshot_and_leave_in_order_after_resume() -> None:
    logic, clock = window()
    logic.on_batch([message("wamid.2", T0 + 2), message("wamid.1", T0 + 1)])
    state = pickle.loads(pickle.dumps(logic.snapshot()))
    (heap,) = state.held.values()
    assert [h.event.event_key for h in sorted(heap)] == ["wamid.1", "wamid.2"]
    backlog = Backlog()
    resumed, _ = window(resume=state, clock=clock, backlog=backlog)
    assert backlog.count == 2
    clock.advance(0.1)
    resumed.on_batch([message("wamid.0", T0)])  # arrives after the restart, within the window
    clock.advance(0.3)
    out, discard = resumed.on_notify()
    assert keys(out) == ["wamid.0", "wamid.1", "wamid.2"] and discard and backlog.count == 0


def test_events_held_at_a_snapshot_are_released_at_once_after_a_late_resume() -> None:
    logic, clock = window()
    logic.on_batch([message("wamid.2", T0 + 2), message("wamid.1", T0 + 1)])
    state = pickle.loads(pickle.dumps(logic.snapshot()))
    clock.advance(60)  # the worker was down for a minute
    resumed, _ = window(resume=state, clock=clock)
    due = resumed.notify_at()
    assert due is not None and due <= clock.now  # fires at once, a single time
    out, discard = resumed.on_notify()
    assert keys(out) == ["wamid.1", "wamid.2"] and discard and resumed.notify_at() is None


def test_the_end_of_the_input_releases_every_held_event_in_order() -> None:
    backlog = Backlog()
    logic, _ = window(backlog=backlog)
    logic.on_batch(
        [
            message("wamid.a2", T0 + 2),
            message("wamid.b", T0, wa_id="42"),
            message("wamid.a1", T0 + 1),
        ]
    )
    out, discard = logic.on_eof()
    assert sorted(keys(out)) == ["wamid.a1", "wamid.a2", "wamid.b"] and discard
    assert keys(out).index("wamid.a1") < keys(out).index("wamid.a2") and backlog.count == 0


def test_shards_are_stable_and_spread() -> None:
    assert shard_of("31600000001") == shard_of("31600000001")
    shards = {shard_of(f"316{n:08}") for n in range(2000)}
    assert len(shards) == SHARDS
    # Not Python's `hash`, which is salted per process: another process agrees.
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from wa_worker.operators.window import shard_of; print(shard_of('31600000001'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == shard_of("31600000001")


def test_a_conversation_state_holding_window_events_queues_them_in_order_on_resume() -> None:
    """Snapshots from when the window was kept in each conversation's state."""
    clock = Clock()
    heap: list[reorder.Held] = []
    reorder.hold(heap, message("wamid.2", T0 + 2), clock.now, 0)
    reorder.hold(heap, message("wamid.1", T0 + 1), clock.now, 1)
    heap[0].token = "early-token"  # claimed early before the window: its claim stays ours
    old = ConversationState()
    old.__dict__.update(held=heap, arrivals=2)  # what the older release pickled
    state = pickle.loads(pickle.dumps(old))
    backlog = Backlog()
    resumed, submit, _ = make(resume=state, clock=clock, backlog=backlog)
    assert backlog.count == 2
    resumed.on_notify()
    assert submit.claims[0] == ("wamid.1", "early-token")
    assert finish_all(resumed, submit) == ["wamid.1", "wamid.2"] and backlog.count == 0


def test_a_state_snapshotted_before_the_window_existed_resumes() -> None:
    logic, _, clock = make()
    logic.on_batch([message("wamid.a", T0)])
    old = logic.snapshot()
    resumed, submit, _ = make(resume=pickle.loads(pickle.dumps(old)), clock=clock)
    resumed.on_notify()
    assert finish_all(resumed, submit) == ["wamid.a"]


def test_the_replay_finish_tracker_waits_for_events_held_in_the_window() -> None:
    tracker = FinishTracker()
    held, clock = window()
    logic, submit, _ = make(clock=clock)
    counted = tracker.counted_logic(lambda resume: logic)(None)
    tracker.emitted(1)
    event = message("wamid.a", T0)
    tracker.counted_parse(lambda batch: [event])([None])  # type: ignore[list-item]
    tracker.input_ended()
    assert held.on_batch([event]) == ([], False)
    assert not tracker.finished  # held, not handled: the replay must wait for it
    clock.advance(0.3)
    released, _ = held.on_notify()
    counted.on_batch(list(released))
    assert not tracker.finished
    key, token = submit.claims[0]
    out, discard = counted.on_batch([claimed(key, token)])
    assert [type(o) for o in out] == [Processed] and discard and tracker.finished


# --- settings --------------------------------------------------------------------------


def _settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, **env: str) -> Any:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("REORDER_WINDOW_MS", "HANDLER_ORDERED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


@pytest.mark.parametrize("value", ["-1", "soon", "60001"])
def test_a_bad_reorder_window_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, value: str
) -> None:
    with pytest.raises(ConfigError, match="REORDER_WINDOW_MS"):
        _settings(monkeypatch, tmp_path, REORDER_WINDOW_MS=value)


def test_the_window_defaults_to_300_ms_and_is_a_step_only_when_ordered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    settings = _settings(monkeypatch, tmp_path, KAFKA_BROKERS="127.0.0.1:9")
    assert settings.reorder_window_ms == 300
    assert "reorder-window" in _steps(settings)
    unordered = _settings(monkeypatch, tmp_path, HANDLER_ORDERED="false")
    assert "reorder-window" not in _steps(unordered)
    off = _settings(monkeypatch, tmp_path, REORDER_WINDOW_MS="0")
    assert "reorder-window" not in _steps(off)


def _steps(settings: Any) -> set[str]:
    services = Services.create(settings)
    source: TestingSource[Any] = TestingSource([])
    flow = dataflow.build("f", services, source, ("out", TestingSink([])))
    return {step.step_id.removeprefix("f.") for step in flow.substeps}
