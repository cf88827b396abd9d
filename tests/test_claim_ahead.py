"""Claim ahead (operators/conversation.py) on the real Redis, through the real I/O runtime: the
events behind a conversation's head are claimed with it, and a claim taken ahead is never
used for a handler call once its lease may have run out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.webhooks import text_event
from wa_worker.core.runtime import IoRuntime
from wa_worker.models.completions import (
    ClaimResult,
    ClaimStatus,
    HandleResult,
    HandleStatus,
)
from wa_worker.models.records import Processed, WebhookEvent
from wa_worker.operators.conversation import ConversationLogic, LogicValue, conversation_builder
from wa_worker.settings import Settings, load_settings


@pytest.fixture
def settings(stack: Any, redis_prefix: str) -> Settings:
    return load_settings(
        kafka_brokers=stack.brokers,
        redis_url=stack.redis_url,
        redis_key_prefix=redis_prefix,
        claim_lease_ms=1000,  # the shortest allowed: a claim taken ahead ages out quickly
        handler_timeout_ms=100,
        reorder_window_ms=0,  # events queue as they arrive: no wait for the window
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[IoRuntime]:
    io = IoRuntime(settings)  # the pass-through handler: answers inline
    yield io
    io.close()


class HeldCalls:
    """The real runtime for claims; handler calls are kept for the test to answer."""

    def __init__(self, runtime: IoRuntime) -> None:
        self.runtime = runtime
        self.handles: list[str] = []
        self.claims: list[str] = []

    def claim(self, route_key: str, event_key: str, token: str, lease_ms: int) -> None:
        self.claims.append(event_key)
        self.runtime.claim(route_key, event_key, token, lease_ms)

    def handle(self, route_key: str, event: WebhookEvent, token: str) -> None:
        self.handles.append(event.event_key)

    def handle_inline(self, event: WebhookEvent, token: str) -> HandleResult | None:
        return None

    def record_attempts(self, event_key: str, token: str, attempts: int, lease_ms: int) -> None:
        self.runtime.record_attempts(event_key, token, attempts, lease_ms)

    def inline_handled(self, count: int) -> None:
        pass


def results(runtime: IoRuntime, count: int) -> list[LogicValue]:
    return [runtime.completions.get(timeout=10)[1] for _ in range(count)]


def conversation(prefix: str, count: int) -> list[WebhookEvent]:
    return [text_event(f"wamid.{prefix}{i}", wa_id="31600000001") for i in range(count)]


def test_a_conversations_queue_is_claimed_in_one_round_trip(
    settings: Settings, runtime: IoRuntime
) -> None:
    # Before: each event waited for its own claim after the previous one finished, one Redis
    # round trip (and one hop through the dataflow) per event of a busy conversation.
    logic = conversation_builder(settings, lambda: runtime)(None)
    events = conversation("queue", 40)
    out = list(logic.on_batch(list(events))[0])
    rounds = 0
    while len(out) < len(events) and rounds < 100:
        rounds += 1
        out += logic.on_batch(_next_batch(runtime))[0]
    assert [o.event.event_key for o in out if isinstance(o, Processed)] == [
        e.event_key for e in events
    ]  # still one at a time, in order
    assert rounds <= 3  # the head's claim, then the rest of the queue (CLAIM_AHEAD 128)
    assert runtime.idle()  # every claim counted back (once per Redis batch)


def _next_batch(runtime: IoRuntime) -> list[LogicValue]:
    """What the completion source would hand over: the next result and those right behind."""
    batch: list[LogicValue] = [runtime.completions.get(timeout=10)[1]]
    time.sleep(0.05)  # claims sent together come back from one Redis batch
    while not runtime.completions.empty():
        batch.append(runtime.completions.get_nowait()[1])
    return batch


def test_a_claim_taken_ahead_is_claimed_again_once_it_may_have_expired(
    settings: Settings, runtime: IoRuntime
) -> None:
    submit = HeldCalls(runtime)
    logic: ConversationLogic = conversation_builder(settings, lambda: submit)(None)
    a, b = conversation("lease", 2)
    logic.on_batch([a, b])
    assert submit.claims == [a.event_key, b.event_key]  # b claimed ahead, with a
    logic.on_batch(results(runtime, 2))
    assert submit.handles == [a.event_key]
    # a's call takes longer than b's lease (100 ms timeout + 1 s): b's claim has expired
    # in Redis, and another run (say one that took the conversation over) claims it.
    time.sleep(1.3)
    runtime.claim("other", b.event_key, "another-run", 30_000)
    (theirs,) = results(runtime, 1)
    assert isinstance(theirs, ClaimResult) and theirs.status is ClaimStatus.CLAIMED
    out, _ = logic.on_batch([HandleResult(a.event_key, _token(logic, a), HandleStatus.OK)])
    assert [o.event.event_key for o in out if isinstance(o, Processed)] == [a.event_key]
    # b is not handled on the claim it got before: it is claimed again, and now busy.
    assert submit.handles == [a.event_key]
    assert submit.claims == [a.event_key, b.event_key, b.event_key]
    (again,) = results(runtime, 1)
    assert isinstance(again, ClaimResult) and again.status is ClaimStatus.BUSY
    logic.on_batch([again])
    assert submit.handles == [a.event_key]


def test_a_claim_taken_ahead_and_still_fresh_is_used_without_a_round_trip(
    settings: Settings, runtime: IoRuntime
) -> None:
    submit = HeldCalls(runtime)
    logic: ConversationLogic = conversation_builder(settings, lambda: submit)(None)
    a, b = conversation("fresh", 2)
    logic.on_batch([a, b])
    logic.on_batch(results(runtime, 2))
    logic.on_batch([HandleResult(a.event_key, _token(logic, a), HandleStatus.OK)])
    assert submit.handles == [a.event_key, b.event_key]
    assert submit.claims == [a.event_key, b.event_key]


def _token(logic: ConversationLogic, event: WebhookEvent) -> str:
    (pending,) = [p for p in logic.snapshot().queue if p.event.event_key == event.event_key]
    return pending.token
