"""The reorder window (REORDER_WINDOW_MS) on plain values: no Bytewax, no I/O."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devtools.webhooks import envelope, messages_value, payload, status, text_message
from tests.test_conversation import Backlog, Clock, FakeSubmitter, claimed
from wa_worker.errors import ConfigError
from wa_worker.models.completions import HandleResult, HandleStatus
from wa_worker.models.records import Processed, WebhookEvent
from wa_worker.operators import reorder
from wa_worker.operators.backoff import BackoffPolicy
from wa_worker.operators.conversation import (
    ConversationLogic,
    ConversationPolicy,
    ConversationState,
    conversation_builder,
)
from wa_worker.operators.finish import FinishTracker
from wa_worker.operators.parse import parse_record
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
    window_ms: int = 300,
    resume: ConversationState | None = None,
    clock: Clock | None = None,
    backlog: Backlog | None = None,
) -> tuple[ConversationLogic, FakeSubmitter, Clock]:
    submit, clock = FakeSubmitter(inline=True), clock or Clock()
    policy = ConversationPolicy(BackoffPolicy(1000, 60_000, 0.0, 3), 30_000, 10.0, window_ms)
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


# --- in the conversation logic ---------------------------------------------------------


def test_events_arriving_out_of_order_within_the_window_start_in_timestamp_order() -> None:
    backlog = Backlog()
    logic, submit, clock = make(backlog=backlog)
    logic.on_batch([message("wamid.2", T0 + 2)])
    clock.advance(0.1)
    logic.on_batch([message("wamid.1", T0 + 1), message("wamid.0", T0)])
    assert submit.claims == [] and backlog.count == 3  # held events count as in progress
    due = logic.notify_at()
    assert due is not None and due.tzinfo is UTC and due == clock.now + WINDOW
    clock.now = due
    _, discard = logic.on_notify()
    assert not discard
    assert finish_all(logic, submit) == ["wamid.0", "wamid.1", "wamid.2"]
    assert backlog.count == 0


def test_a_held_logic_is_kept_and_a_redelivery_of_a_held_event_is_a_duplicate() -> None:
    backlog = Backlog()
    logic, submit, clock = make(backlog=backlog)
    event = message("wamid.a", T0)
    _, discard = logic.on_batch([event, event])
    assert not discard and backlog.count == 1  # held, not dropped: the logic must stay
    clock.advance(0.3)
    logic.on_notify()
    logic.on_batch([event])  # queued now: still a duplicate
    assert finish_all(logic, submit) == ["wamid.a"]
    assert backlog.count == 0


def test_window_zero_queues_at_once_as_before() -> None:
    logic, submit, _ = make(window_ms=0)
    logic.on_batch([message("wamid.2", T0 + 2), message("wamid.1", T0 + 1)])
    assert finish_all(logic, submit) == ["wamid.2", "wamid.1"]


def test_held_events_survive_a_snapshot_and_come_out_in_order_after_resume() -> None:
    logic, submit, clock = make()
    logic.on_batch([message("wamid.2", T0 + 2), message("wamid.1", T0 + 1)])
    state = pickle.loads(pickle.dumps(logic.snapshot()))
    assert [h.event.event_key for h in sorted(state.held)] == ["wamid.1", "wamid.2"]
    backlog = Backlog()
    resumed, submit2, _ = make(resume=state, clock=clock, backlog=backlog)
    assert backlog.count == 2
    clock.advance(0.1)
    resumed.on_batch([message("wamid.0", T0)])  # arrives after the restart, within the window
    resumed.on_batch([message("wamid.1", T0 + 1)])  # the input re-read: a duplicate
    due = resumed.notify_at()
    assert due is not None and due.tzinfo is UTC and due == clock.now + WINDOW
    clock.now = due
    resumed.on_notify()
    assert finish_all(resumed, submit2) == ["wamid.0", "wamid.1", "wamid.2"]
    assert backlog.count == 0 and submit.claims == []


def test_events_held_at_a_snapshot_are_released_at_once_after_a_late_resume() -> None:
    logic, _, clock = make()
    logic.on_batch([message("wamid.2", T0 + 2), message("wamid.1", T0 + 1)])
    state = pickle.loads(pickle.dumps(logic.snapshot()))
    clock.advance(60)  # the worker was down for a minute
    resumed, submit, _ = make(resume=state, clock=clock)
    due = resumed.notify_at()
    assert due is not None and due <= clock.now  # fires at once, a single time
    resumed.on_notify()
    assert resumed.notify_at() is None or resumed.notify_at() > clock.now  # type: ignore[operator]
    assert finish_all(resumed, submit) == ["wamid.1", "wamid.2"]


def test_a_state_snapshotted_before_the_window_existed_resumes() -> None:
    logic, _, clock = make(window_ms=0)
    logic.on_batch([message("wamid.a", T0)])
    old = logic.snapshot()
    del old.__dict__["held"], old.__dict__["arrivals"]  # what an older release pickled
    resumed, submit, _ = make(resume=pickle.loads(pickle.dumps(old)), clock=clock)
    resumed.on_notify()
    assert finish_all(resumed, submit) == ["wamid.a"]


def test_the_replay_finish_tracker_sees_a_conversation_with_held_events_as_open() -> None:
    tracker = FinishTracker()
    logic, submit, clock = make()
    counted = tracker.counted_logic(lambda resume: logic)(None)
    tracker.emitted(1)
    event = message("wamid.a", T0)
    tracker.counted_parse(lambda batch: [event])([None])  # type: ignore[list-item]
    tracker.input_ended()
    counted.on_batch([event])
    assert not tracker.finished  # held, not handled: the replay must wait for it
    clock.advance(0.3)
    counted.on_notify()
    key, token = submit.claims[0]
    out, discard = counted.on_batch([claimed(key, token)])
    assert [type(o) for o in out] == [Processed] and discard and tracker.finished


def test_a_retry_of_the_head_and_the_window_wake_the_logic_at_the_earlier_time() -> None:
    submit, clock = FakeSubmitter(), Clock()
    policy = ConversationPolicy(BackoffPolicy(1000, 60_000, 0.0, 3), 30_000, 10.0, 300)
    logic = ConversationLogic(lambda e: e.conversation_key, submit, policy, None, clock)
    logic.on_batch([message("wamid.a", T0)])
    clock.advance(0.3)
    logic.on_notify()
    key, token = submit.claims[0]
    logic.on_batch([claimed(key, token)])
    logic.on_batch([HandleResult(key, token, HandleStatus.TRANSIENT)])  # retry in 1 s
    clock.advance(0.1)
    logic.on_batch([message("wamid.b", T0 + 1)])
    assert logic.notify_at() == clock.now + WINDOW  # b's release comes before a's retry
    clock.advance(0.3)
    logic.on_notify()
    assert logic.notify_at() == clock.now + timedelta(seconds=0.6)  # then the retry
    assert [k for k, _ in submit.claims] == ["wamid.a"]  # b waits behind the head


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


def test_the_window_defaults_to_300_ms_and_is_off_when_unordered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    settings = _settings(monkeypatch, tmp_path)
    assert settings.reorder_window_ms == 300
    ordered = conversation_builder(settings, FakeSubmitter)(None)
    ordered.on_batch([message("wamid.a", T0)])
    assert ordered.snapshot().held  # waits the window
    unordered = _settings(monkeypatch, tmp_path, HANDLER_ORDERED="false")
    logic = conversation_builder(unordered, FakeSubmitter)(None)
    logic.on_batch([message("wamid.a", T0)])
    assert not logic.snapshot().held and logic.snapshot().queue  # queued at once
