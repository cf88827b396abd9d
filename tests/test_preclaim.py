"""Claiming a batch's events before their conversations (operators/preclaim.py), on the real
Redis through the real I/O runtime: one round trip for the batch, conversations that use the
answers without claiming again, and the cases where they must claim again (Redis down, an
answer too old, a redelivered copy that took the claim, a state from before an upgrade)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from devtools.devstack import free_port
from devtools.webhooks import envelope, messages_value, payload, status, text_event
from harness.tcp_proxy import TcpProxy
from wa_worker.core.runtime import IoRuntime
from wa_worker.models.completions import Claimed, ClaimResult, ClaimStatus, HandleResult
from wa_worker.models.records import Processed, WebhookEvent
from wa_worker.operators import reorder
from wa_worker.operators.conversation import (
    ConversationLogic,
    ConversationState,
    LogicValue,
    Pending,
    conversation_builder,
    route_key,
)
from wa_worker.operators.parse import parse_record
from wa_worker.operators.preclaim import PAUSE_AFTER_FAILURE_S, PreClaim, pre_claim
from wa_worker.operators.window import window_builder
from wa_worker.settings import Settings, load_settings

CUSTOMER = "31600000002"
T0 = 1_700_000_000


def _settings(stack: Any, redis_prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka_brokers": stack.brokers,
        "redis_url": stack.redis_url,
        "redis_key_prefix": redis_prefix,
        "reorder_window_ms": 0,
    }
    return load_settings(**(values | overrides))


@pytest.fixture
def settings(stack: Any, redis_prefix: str) -> Settings:
    return _settings(stack, redis_prefix)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[IoRuntime]:
    io = IoRuntime(settings)  # the pass-through handler: answers inline
    yield io
    io.close()


class Submitted:
    """The real runtime, with each claim it is asked for noted (event key, token)."""

    def __init__(self, runtime: IoRuntime) -> None:
        self.runtime = runtime
        self.claims: list[tuple[str, str]] = []

    def claim(self, route_key: str, event_key: str, token: str, lease_ms: int) -> None:
        self.claims.append((event_key, token))
        self.runtime.claim(route_key, event_key, token, lease_ms)

    def handle(self, route_key: str, event: WebhookEvent, token: str) -> None:
        raise AssertionError("the pass-through answers inline")

    def handle_inline(self, event: WebhookEvent, token: str) -> HandleResult | None:
        return self.runtime.handle_inline(event, token)

    def record_attempts(self, event_key: str, token: str, attempts: int, lease_ms: int) -> None:
        self.runtime.record_attempts(event_key, token, attempts, lease_ms)

    def inline_handled(self, count: int) -> None:
        pass


def _events(tag: str, count: int, customer: str = CUSTOMER) -> list[WebhookEvent]:
    return [text_event(f"wamid.{tag}{i}", wa_id=customer) for i in range(count)]


def _status(wamid: str, name: str, meta_ts: int) -> WebhookEvent:
    item = {**status(wamid, CUSTOMER, name), "timestamp": str(meta_ts)}
    raw = envelope(f"w-{wamid}-{name}", payload(messages_value(statuses=[item])))
    (event,) = parse_record(raw, None)
    assert isinstance(event, WebhookEvent)
    return event


def _keyed(events: list[WebhookEvent]) -> list[tuple[str, WebhookEvent]]:
    return [(e.conversation_key, e) for e in events]


def _claimed(out: list[tuple[str, WebhookEvent | Claimed]]) -> list[Claimed]:
    values = [value for _, value in out]
    assert all(isinstance(v, Claimed) for v in values)
    return [v for v in values if isinstance(v, Claimed)]


def _processed(out: Any) -> list[str]:
    return [o.event.event_key for o in out if isinstance(o, Processed)]


def _logic(settings: Settings, submit: Submitted) -> ConversationLogic:
    return conversation_builder(settings, lambda: submit)(None)


def test_a_batch_is_claimed_in_one_round_trip_and_handled_without_claiming_again(
    settings: Settings, runtime: IoRuntime
) -> None:
    events = _events("early", 40)
    others = _events("other", 5, customer="31600000003")
    out = pre_claim(settings, lambda: runtime)(_keyed(events + others))
    claimed = _claimed(out)
    assert [c.event for c in claimed] == events + others  # order and keys kept
    assert {c.result.status for c in claimed if c.result} == {ClaimStatus.CLAIMED}
    assert all(c.result and c.result.token == c.token for c in claimed)
    submit = Submitted(runtime)
    logic = _logic(settings, submit)
    done, discard = logic.on_batch([c for c in claimed if c.event in events])
    # Forty events of one conversation, in order, in the one pass: no claim of their own.
    assert _processed(done) == [e.event_key for e in events]
    assert submit.claims == [] and discard
    assert runtime.idle() and runtime.completions.empty()


def test_a_redelivered_copy_is_answered_busy_and_dropped(
    settings: Settings, runtime: IoRuntime
) -> None:
    step = pre_claim(settings, lambda: runtime)
    (event,) = _events("copy", 1)
    (first,) = _claimed(step(_keyed([event])))
    (copy,) = _claimed(step(_keyed([event])))
    assert copy.result is not None and copy.result.status is ClaimStatus.BUSY
    submit = Submitted(runtime)
    logic = _logic(settings, submit)
    done, _ = logic.on_batch([first, copy])
    assert _processed(done) == [event.event_key] and submit.claims == []


def test_a_stale_answer_is_claimed_again_with_the_same_token(
    settings: Settings, runtime: IoRuntime
) -> None:
    (event,) = _events("aged", 1)
    (early,) = _claimed(pre_claim(settings, lambda: runtime)(_keyed([event])))
    # Sent longer ago than half the claim lease: it may end during the handler's call.
    aged = Claimed(early.event, early.token, early.sent_at - timedelta(minutes=1), early.result)
    submit = Submitted(runtime)
    logic = _logic(settings, submit)
    done, _ = logic.on_batch([aged])
    assert _processed(done) == [] and submit.claims == [(event.event_key, early.token)]
    (_, again) = runtime.completions.get(timeout=10)
    assert isinstance(again, ClaimResult) and again.status is ClaimStatus.CLAIMED  # still ours
    done, _ = logic.on_batch([again])
    assert _processed(done) == [event.event_key]


def test_redis_down_passes_events_on_with_their_tokens_and_pauses(
    stack: Any, redis_prefix: str
) -> None:
    settings = _settings(
        stack, redis_prefix, redis_url=f"redis://127.0.0.1:{free_port()}", redis_timeout_ms=200
    )
    io = IoRuntime(settings)
    now = [0.0]
    step = PreClaim(lambda: io, 40_000, 0.5, clock=lambda: now[0])
    try:
        events = _events("down", 3)
        started = time.monotonic()
        claimed = _claimed(step(_keyed(events)))
        assert time.monotonic() - started < 2
        assert [c.result for c in claimed] == [None, None, None]
        assert len({c.token for c in claimed}) == 3
        # Paused: the next batches pass untouched, without waiting on Redis.
        now[0] += PAUSE_AFTER_FAILURE_S / 2
        assert step(_keyed(events)) == _keyed(events)
        # The conversation claims each with its token (the claims may have been taken).
        recorded: list[tuple[str, str]] = []

        class Noted(Submitted):
            def claim(self, route_key: str, event_key: str, token: str, lease_ms: int) -> None:
                recorded.append((event_key, token))

        logic = _logic(settings, Noted(io))
        logic.on_batch(list(claimed))
        assert recorded == [(c.event.event_key, c.token) for c in claimed]  # head and ahead
    finally:
        io.close()


def test_a_copy_that_took_the_claim_gives_its_token_to_the_queued_event(
    settings: Settings, runtime: IoRuntime
) -> None:
    # Queued events not claimed yet (resumed from a snapshot; their run's claims are gone),
    # and a redelivered copy of the second, claimed early: the copy holds its claim now.
    first, second = _events("adopt", 2)
    state = ConversationState(queue=[Pending(first, "old-1"), Pending(second, "old-2")])
    (copy,) = _claimed(pre_claim(settings, lambda: runtime)(_keyed([second])))
    assert copy.result is not None and copy.result.status is ClaimStatus.CLAIMED
    submit = Submitted(runtime)
    logic = conversation_builder(settings, lambda: submit)(state)
    out: list[Any] = list(logic.on_batch([copy])[0])
    # The second is claimed with the copy's token: its own would read busy for a lease.
    assert submit.claims == [(first.event_key, "old-1"), (second.event_key, copy.token)]
    while len(_processed(out)) < 2:
        (_, result) = runtime.completions.get(timeout=10)
        assert isinstance(result, ClaimResult) and result.status is ClaimStatus.CLAIMED
        out += logic.on_batch([result])[0]
    assert _processed(out) == [first.event_key, second.event_key]


def test_statuses_leaving_the_window_are_claimed_in_its_order_and_none_is_superseded(
    stack: Any, redis_prefix: str
) -> None:
    """The window comes before this step: a `sent` that arrived after its `delivered` (but
    within the window) is claimed first, so neither reads as superseded."""
    settings = _settings(stack, redis_prefix, reorder_window_ms=50)
    io = IoRuntime(settings)
    try:
        sent, delivered = (
            _status("wamid.window-out", name, T0 + rank)
            for rank, name in enumerate(("sent", "delivered"))
        )
        window = window_builder(route_key(True), settings.reorder_window_ms)(None)
        assert window.on_batch([delivered, sent]) == ([], False)  # arrival order
        time.sleep(0.06)
        released, _ = window.on_notify()
        out = pre_claim(settings, lambda: io)(_keyed(list(released)))
        claimed = _claimed(out)
        assert [c.event.event_key for c in claimed] == [sent.event_key, delivered.event_key]
        submit = Submitted(io)
        done, _ = _logic(settings, submit).on_batch(list[LogicValue](claimed))
        assert _processed(done) == [sent.event_key, delivered.event_key] and submit.claims == []
        handled = [o.event for o in done if isinstance(o, Processed) and o.event is not None]
        assert [(e.current_status, e.superseded) for e in handled] == [
            ("sent", False),
            ("delivered", False),
        ]
    finally:
        io.close()


def test_a_held_event_claimed_early_before_an_upgrade_keeps_its_token(
    stack: Any, redis_prefix: str
) -> None:
    """A conversation state from when the window was kept there and messages were claimed
    before it: its held event resumes queued, claimed with its early claim's token."""
    settings = _settings(stack, redis_prefix, reorder_window_ms=200)
    io = IoRuntime(settings)
    try:
        (event,) = _events("restart", 1)
        (early,) = _claimed(pre_claim(settings, lambda: io)(_keyed([event])))
        heap: list[reorder.Held] = []
        reorder.hold(heap, event, early.sent_at, 0)
        heap[0].token = early.token
        old = ConversationState()
        old.__dict__.update(held=heap, arrivals=1)  # what that release snapshotted
        submit = Submitted(io)
        resumed = conversation_builder(settings, lambda: submit)(old)
        resumed.on_notify()
        # Claimed again with its early claim's token: ours, not busy for the lease's 40 s.
        assert submit.claims == [(event.event_key, early.token)]
        (_, result) = io.completions.get(timeout=10)
        assert isinstance(result, ClaimResult) and result.status is ClaimStatus.CLAIMED
        done, _ = resumed.on_batch([result])
        assert _processed(done) == [event.event_key]
    finally:
        io.close()


def test_an_answer_too_slow_leaves_the_claim_to_the_conversation_with_the_same_token(
    stack: Any, redis_prefix: str
) -> None:
    target = stack.redis_url.rsplit(":", 1)
    port = int(target[1].split("/")[0])
    with TcpProxy("127.0.0.1", port) as proxy:
        settings = _settings(stack, redis_prefix, redis_url=proxy.url())
        io = IoRuntime(settings)
        try:
            step = PreClaim(lambda: io, 40_000, 0.1)
            proxy.delay(400)  # Redis answers, after the step stopped waiting
            (event,) = _events("slow", 1)
            (late,) = _claimed(step(_keyed([event])))
            assert late.result is None
            proxy.delay(0)
            time.sleep(0.5)  # the late claim is taken meanwhile, with the step's token
            submit = Submitted(io)
            logic = _logic(settings, submit)
            logic.on_batch([late])
            assert submit.claims == [(event.event_key, late.token)]
            (_, result) = io.completions.get(timeout=10)
            # Its own token: ours, not busy for the 40 s lease the late claim took.
            assert isinstance(result, ClaimResult) and result.status is ClaimStatus.CLAIMED
            done, _ = logic.on_batch([result])
            assert _processed(done) == [event.event_key]
        finally:
            io.close()
