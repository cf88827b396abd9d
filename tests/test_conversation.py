"""The per-conversation state machine, driven by hand: no Bytewax, no I/O."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.webhooks import conversation_webhook
from wa_worker.core import metrics
from wa_worker.models.completions import (
    Claimed,
    ClaimResult,
    ClaimStatus,
    HandleResult,
    HandleStatus,
)
from wa_worker.models.records import DeadLetter, ErrorClass, Processed, WebhookEvent
from wa_worker.operators.backoff import BackoffPolicy
from wa_worker.operators.conversation import ConversationLogic, ConversationPolicy, OpenGate
from wa_worker.operators.parse import parse_record


class FakeSubmitter:
    def __init__(self, inline: bool = False) -> None:
        self.inline = inline  # answer handler calls at once, like the pass-through handler
        self.claims: list[tuple[str, str]] = []
        self.handles: list[tuple[str, str]] = []
        self.records: list[tuple[str, int]] = []

    def claim(self, route_key: str, event_key: str, token: str, lease_ms: int) -> None:
        self.claims.append((event_key, token))

    def handle(self, route_key: str, event: WebhookEvent, token: str) -> None:
        self.handles.append((event.event_key, token))

    def record_attempts(self, event_key: str, token: str, attempts: int, lease_ms: int) -> None:
        self.records.append((event_key, attempts))

    def inline_handled(self, count: int) -> None:
        pass

    def handle_inline(self, event: WebhookEvent, token: str) -> HandleResult | None:
        if not self.inline:
            return None
        return HandleResult(event.event_key, token, HandleStatus.OK, result={"inline": True})


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def events(*wamids: str) -> list[WebhookEvent]:
    parsed = parse_record(conversation_webhook("w1", "3161", list(wamids)), None)
    assert all(isinstance(e, WebhookEvent) for e in parsed)
    return parsed  # type: ignore[return-value]


class Backlog:
    def __init__(self) -> None:
        self.count = 0

    def add(self, count: int = 1) -> None:
        self.count += count

    def done(self, count: int = 1) -> None:
        self.count -= count


def make(
    max_retries: int = 3,
    resume=None,
    clock: Clock | None = None,
    inline: bool = False,
    backlog: Backlog | None = None,
):
    submit, clock = FakeSubmitter(inline), clock or Clock()
    policy = ConversationPolicy(BackoffPolicy(1000, 60_000, 0.0, max_retries), 30_000, 10.0)
    logic = ConversationLogic(
        lambda e: e.conversation_key, submit, policy, resume, clock, backlog=backlog
    )
    return logic, submit, clock


def claimed(event_key: str, token: str, attempts: int = 0) -> ClaimResult:
    return ClaimResult(event_key, token, ClaimStatus.CLAIMED, attempts)


def test_events_of_a_conversation_are_handled_one_at_a_time_in_order() -> None:
    logic, submit, _ = make()
    a, b = events("wamid.a", "wamid.b")
    logic.on_batch([a, b])
    # b is claimed ahead, with a (one Redis batch), but handled only after a.
    assert [k for k, _ in submit.claims] == ["wamid.a", "wamid.b"]
    (_, token_a), (_, token_b) = submit.claims
    logic.on_batch([claimed("wamid.b", token_b), claimed("wamid.a", token_a)])
    assert submit.handles == [("wamid.a", token_a)]  # b's claim came first: b still waits
    out, discard = logic.on_batch([HandleResult("wamid.a", token_a, HandleStatus.OK, {"r": 1})])
    assert [type(o) for o in out] == [Processed] and not discard
    # b starts at once on the claim it already has: no second claim, no round trip.
    assert submit.handles == [("wamid.a", token_a), ("wamid.b", token_b)]
    assert len(submit.claims) == 2
    out, discard = logic.on_batch([HandleResult("wamid.b", token_b, HandleStatus.OK)])
    assert discard  # nothing left: the state is dropped


def test_transient_failures_back_off_exponentially_then_dead_letter() -> None:
    logic, submit, clock = make(max_retries=2)
    (a,) = events("wamid.a")
    logic.on_batch([a])
    token = submit.claims[0][1]
    logic.on_batch([claimed("wamid.a", token)])
    delays = []
    for _ in range(2):
        logic.on_batch([HandleResult("wamid.a", token, HandleStatus.TRANSIENT, error="503")])
        due = logic.notify_at()
        assert due is not None and due.tzinfo is UTC
        delays.append((due - clock.now).total_seconds())
        clock.now = due
        logic.on_notify()
    assert delays == [1.0, 2.0]
    assert len(submit.handles) == 3 and submit.records == [("wamid.a", 1), ("wamid.a", 2)]
    out, discard = logic.on_batch(
        [HandleResult("wamid.a", token, HandleStatus.TRANSIENT, error="503", status_code=503)]
    )
    (letter,) = out
    assert isinstance(letter, DeadLetter) and discard
    assert letter.error_class is ErrorClass.RETRIES_EXHAUSTED and letter.attempts == 3
    assert letter.status_code == 503 and letter.event_key == "wamid.a"


def test_retry_after_sets_a_floor_on_the_delay() -> None:
    logic, submit, clock = make()
    (a,) = events("wamid.a")
    logic.on_batch([a])
    token = submit.claims[0][1]
    logic.on_batch([claimed("wamid.a", token)])
    logic.on_batch([HandleResult("wamid.a", token, HandleStatus.TRANSIENT, retry_after_s=7)])
    assert logic.notify_at() == clock.now + timedelta(seconds=7)


def test_permanent_failure_dead_letters_at_once() -> None:
    logic, submit, _ = make()
    (a,) = events("wamid.a")
    logic.on_batch([a])
    token = submit.claims[0][1]
    logic.on_batch([claimed("wamid.a", token)])
    out, _ = logic.on_batch(
        [HandleResult("wamid.a", token, HandleStatus.PERMANENT, error="HTTP 422", status_code=422)]
    )
    assert [o.error_class for o in out] == [ErrorClass.HANDLER_PERMANENT]


def test_done_claim_is_a_duplicate_and_busy_claim_polls_again() -> None:
    logic, submit, clock = make()
    a, b = events("wamid.a", "wamid.b")
    logic.on_batch([a, b])
    out, _ = logic.on_batch([ClaimResult("wamid.a", submit.claims[0][1], ClaimStatus.DONE)])
    assert out == [] and submit.claims[1][0] == "wamid.b"
    logic.on_batch([ClaimResult("wamid.b", submit.claims[1][1], ClaimStatus.BUSY, 0, 20_000)])
    first_wait = (logic.notify_at() - clock.now).total_seconds()
    assert first_wait == 0.25  # polled again soon: the holder may be just marking it done
    logic.on_batch([ClaimResult("wamid.b", submit.claims[1][1], ClaimStatus.ERROR)])
    assert (logic.notify_at() - clock.now).total_seconds() == 0.5


def test_claims_failing_on_redis_retry_at_least_every_second() -> None:
    # Waits that keep doubling while Redis is down (a failover, a partition) would leave the
    # worker idle for as long again once Redis is back; a claim batch is one cheap round trip.
    logic, submit, clock = make()
    (a,) = events("wamid.a")
    logic.on_batch([a])
    waits = []
    for _ in range(6):
        logic.on_batch([ClaimResult("wamid.a", submit.claims[-1][1], ClaimStatus.ERROR)])
        waits.append((logic.notify_at() - clock.now).total_seconds())
        clock.advance(waits[-1])
        logic.on_notify()
    assert waits == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert len(submit.claims) == 7


def test_a_failed_claim_is_not_counted_again_as_a_redis_error() -> None:
    # The runtime counts the failed batch once (wa_redis_errors_total); its N claims coming
    # back as errors must not add N more.
    logic, submit, _clock = make()
    (a,) = events("wamid.a")
    logic.on_batch([a])
    before = metrics.REDIS_ERRORS._value.get()
    logic.on_batch([ClaimResult("wamid.a", submit.claims[0][1], ClaimStatus.ERROR)])
    assert metrics.REDIS_ERRORS._value.get() == before


def test_a_second_copy_of_a_queued_event_is_dropped() -> None:
    logic, submit, _ = make()
    (a,) = events("wamid.a")
    logic.on_batch([a, a])
    logic.on_batch([claimed("wamid.a", submit.claims[0][1])])
    assert len(submit.handles) == 1


def test_stale_results_are_ignored() -> None:
    logic, submit, _ = make()
    (a,) = events("wamid.a")
    logic.on_batch([a])
    out, _ = logic.on_batch([HandleResult("wamid.a", "someone-else", HandleStatus.OK)])
    assert out == [] and submit.handles == []


def test_attempts_recorded_in_redis_count_after_a_lost_recovery_directory() -> None:
    logic, submit, _ = make(max_retries=3)
    (a,) = events("wamid.a")
    logic.on_batch([a])
    out, _ = logic.on_batch([claimed("wamid.a", submit.claims[0][1], attempts=4)])
    assert [o.error_class for o in out] == [ErrorClass.RETRIES_EXHAUSTED]


def test_snapshot_resumes_in_flight_work_with_the_same_token() -> None:
    logic, submit, clock = make()
    (a,) = events("wamid.a")
    logic.on_batch([a])
    token = submit.claims[0][1]
    logic.on_batch([claimed("wamid.a", token)])  # handler call now in flight
    state = pickle.loads(pickle.dumps(logic.snapshot()))
    resumed, submit2, _ = make(resume=state, clock=clock)
    assert resumed.notify_at() == clock.now
    resumed.on_notify()
    assert submit2.claims == [("wamid.a", token)]  # re-claimed first, with the same token
    resumed.on_batch([claimed("wamid.a", token)])
    assert submit2.handles == [("wamid.a", token)]


def test_work_finished_after_the_snapshot_is_not_handled_again() -> None:
    logic, submit, clock = make()
    (a,) = events("wamid.a")
    logic.on_batch([a])
    token = submit.claims[0][1]
    logic.on_batch([claimed("wamid.a", token)])
    resumed, submit2, _ = make(resume=pickle.loads(pickle.dumps(logic.snapshot())), clock=clock)
    resumed.on_notify()
    out, discard = resumed.on_batch([ClaimResult("wamid.a", token, ClaimStatus.DONE)])
    assert out == [] and discard and submit2.handles == []


def test_a_waiting_retry_resumes_at_its_original_time() -> None:
    logic, submit, clock = make()
    (a,) = events("wamid.a")
    logic.on_batch([a])
    token = submit.claims[0][1]
    logic.on_batch([claimed("wamid.a", token)])
    logic.on_batch([HandleResult("wamid.a", token, HandleStatus.TRANSIENT)])
    due = logic.notify_at()
    resumed, _, _ = make(resume=pickle.loads(pickle.dumps(logic.snapshot())), clock=clock)
    assert resumed.notify_at() == due


class ClosedGate:
    def __init__(self) -> None:
        self.open, self.admitted = True, 0

    def is_open(self) -> bool:
        return self.open

    def admit_call(self) -> bool:
        if self.open:
            return False
        self.admitted += 1
        return True


def gated(max_retries: int = 3) -> tuple[ConversationLogic, FakeSubmitter, Clock, ClosedGate]:
    """A logic behind a circuit breaker, open until the test closes it."""
    submit, clock, gate = FakeSubmitter(), Clock(), ClosedGate()
    policy = ConversationPolicy(BackoffPolicy(1000, 60_000, 0.0, max_retries), 30_000, 10.0)
    logic = ConversationLogic(
        lambda e: e.conversation_key, submit, policy, None, clock, handler_gate=gate
    )
    return logic, submit, clock, gate


def claimed_head(logic: ConversationLogic, submit: FakeSubmitter) -> tuple[WebhookEvent, str]:
    """wamid.a in, claimed: the head, waiting for its call."""
    (event,) = events("wamid.a")
    logic.on_batch([event])
    token = submit.claims[0][1]
    logic.on_batch([claimed("wamid.a", token)])
    return event, token


def test_an_open_breaker_holds_handler_calls_without_spending_attempts() -> None:
    logic, submit, clock, gate = gated()
    claimed_head(logic, submit)
    assert submit.handles == []
    due = logic.notify_at()
    assert due is not None and due > clock.now  # re-checks later, no busy loop
    clock.now = due
    gate.open = False
    logic.on_notify()
    assert len(submit.handles) == 1 and gate.admitted == 1


def test_a_failed_breaker_probe_costs_the_event_no_attempt() -> None:
    logic, submit, clock, _ = gated(max_retries=1)
    _, token = claimed_head(logic, submit)

    class TrialGate(ClosedGate):
        def admit_call(self) -> bool:
            return True  # the breaker grants this head the probe

    logic._gate = TrialGate()  # still open: the call is a trial
    for _ in range(5):  # five failed probes would exhaust MAX_RETRIES=1 many times over
        clock.now = logic.notify_at() or clock.now
        logic.on_notify()
        out, _ = logic.on_batch([HandleResult("wamid.a", token, HandleStatus.TRANSIENT)])
        assert out == []
    assert len(submit.handles) == 5
    logic._gate = OpenGate()  # the handler answers again: breaker closed
    clock.now = logic.notify_at() or clock.now
    logic.on_notify()
    out, _ = logic.on_batch([HandleResult("wamid.a", token, HandleStatus.OK)])
    (done,) = out
    assert isinstance(done, Processed) and done.attempts == 1


def test_a_head_held_by_the_breaker_past_half_its_lease_is_claimed_again_before_its_call() -> None:
    # The lease must outlast the call and the done marker after it: a redelivered copy
    # claimed once it ran out would be handled a second time.
    logic, submit, clock, gate = gated()
    _, token = claimed_head(logic, submit)
    clock.advance(14.0)  # within half the 30 s lease: still held, nothing asked
    logic.on_notify()
    assert len(submit.claims) == 1 and submit.handles == []
    clock.advance(2.0)
    logic.on_notify()  # past half: claimed again, same token, though the breaker is open
    assert submit.claims == [("wamid.a", token)] * 2 and submit.handles == []
    logic.on_batch([claimed("wamid.a", token)])
    gate.open = False
    clock.now = logic.notify_at() or clock.now
    logic.on_notify()
    assert submit.handles == [("wamid.a", token)] and len(submit.claims) == 2


def test_a_held_head_whose_lease_a_copy_took_calls_with_the_copys_token() -> None:
    logic, submit, clock, gate = gated()
    a, _ = claimed_head(logic, submit)
    clock.advance(45.0)  # the breaker held it past its whole lease
    copy = Claimed(a, "copy-token", clock.now, claimed("wamid.a", "copy-token"))
    logic.on_batch([copy])  # claimed before it came, by the copy: the lease is the copy's
    gate.open = False
    clock.now = logic.notify_at() or clock.now
    logic.on_notify()
    assert submit.handles == [("wamid.a", "copy-token")] and len(submit.claims) == 1


def test_a_retry_waiting_longer_than_half_a_lease_is_not_claimed_again() -> None:
    # Its recorded attempts extended the lease by the wait.
    logic, submit, clock = make()
    _, token = claimed_head(logic, submit)
    for _ in range(3):
        logic.on_batch([HandleResult("wamid.a", token, HandleStatus.TRANSIENT, error="503")])
        clock.now = (logic.notify_at() or clock.now) + timedelta(seconds=10)
        logic.on_notify()
    assert len(submit.claims) == 1 and len(submit.handles) == 4


def test_an_inline_handler_finishes_the_head_and_claims_the_next_in_the_same_pass() -> None:
    backlog = Backlog()
    logic, submit, _ = make(inline=True, backlog=backlog)
    first, second = events("wamid.1", "wamid.2")
    logic.on_batch([first, second])
    assert backlog.count == 2
    out, discard = logic.on_batch([claimed("wamid.1", submit.claims[0][1])])
    assert [(o.event.event_key, o.attempts, o.result) for o in out] == [
        ("wamid.1", 1, {"inline": True})
    ]
    assert submit.handles == [] and [k for k, _ in submit.claims] == ["wamid.1", "wamid.2"]
    assert not discard and backlog.count == 1
    out, discard = logic.on_batch([claimed("wamid.2", submit.claims[1][1])])
    assert [o.event.event_key for o in out] == ["wamid.2"]
    assert discard and backlog.count == 0


def test_backlog_counts_resumed_events_and_drops_duplicates_and_done_ones() -> None:
    backlog = Backlog()
    logic, submit, clock = make(backlog=backlog)
    a, b = events("wamid.1", "wamid.2")
    logic.on_batch([a, b, a])  # the second `a` is a redelivery already queued
    assert backlog.count == 2
    resumed, _, _ = make(resume=logic.snapshot(), clock=clock, backlog=backlog)
    assert backlog.count == 4  # a new process counts what it resumed
    resumed.on_batch([ClaimResult("wamid.1", submit.claims[0][1], ClaimStatus.DONE)])
    assert backlog.count == 3


def test_a_claim_ahead_answered_done_drops_its_event_when_its_turn_comes() -> None:
    logic, submit, _ = make()
    a, b = events("wamid.a", "wamid.b")
    logic.on_batch([a, b])
    (_, token_a), (_, token_b) = submit.claims
    logic.on_batch([claimed("wamid.a", token_a), ClaimResult("wamid.b", token_b, ClaimStatus.DONE)])
    out, discard = logic.on_batch([HandleResult("wamid.a", token_a, HandleStatus.OK)])
    assert [o.event.event_key for o in out] == ["wamid.a"] and discard
    assert submit.handles == [("wamid.a", token_a)]  # b was done before: a duplicate


def test_nothing_is_claimed_ahead_behind_a_head_waiting_to_retry() -> None:
    # Its claims would age while it waits; they are taken once the head is done.
    logic, submit, clock = make()
    (a,) = events("wamid.a")
    logic.on_batch([a])
    token = submit.claims[0][1]
    logic.on_batch([claimed("wamid.a", token)])
    logic.on_batch([HandleResult("wamid.a", token, HandleStatus.TRANSIENT, error="503")])
    (b,) = events("wamid.b")
    logic.on_batch([b])
    clock.advance(1.0)
    logic.on_notify()  # the retry's call starts
    assert [k for k, _ in submit.claims] == ["wamid.a"]
    logic.on_batch([HandleResult("wamid.a", token, HandleStatus.OK)])
    assert [k for k, _ in submit.claims] == ["wamid.a", "wamid.b"]


def test_claims_ahead_are_taken_again_with_their_tokens_after_a_restart() -> None:
    logic, submit, clock = make()
    a, b = events("wamid.a", "wamid.b")
    logic.on_batch([a, b])
    (_, token_a), (_, token_b) = submit.claims
    logic.on_batch([claimed("wamid.b", token_b)])  # b's early result is not in the snapshot
    resumed, submit2, _ = make(resume=pickle.loads(pickle.dumps(logic.snapshot())), clock=clock)
    resumed.on_notify()
    assert submit2.claims == [("wamid.a", token_a), ("wamid.b", token_b)]
    resumed.on_batch([claimed("wamid.a", token_a), claimed("wamid.b", token_b)])
    resumed.on_batch([HandleResult("wamid.a", token_a, HandleStatus.OK)])
    assert submit2.handles == [("wamid.a", token_a), ("wamid.b", token_b)]


class CountingBacklog(Backlog):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def add(self, count: int = 1) -> None:
        self.calls += 1
        super().add(count)


def test_the_backlog_is_told_once_per_batch() -> None:
    # It takes a lock shared by the process's workers: once per event was a cost of its own.
    backlog = CountingBacklog()
    logic, submit, _ = make(inline=True, backlog=backlog)
    logic.on_batch([*events(*(f"wamid.{i}" for i in range(10)))])
    assert (backlog.count, backlog.calls) == (10, 1)
    logic.on_batch([claimed(k, t) for k, t in submit.claims])
    assert (backlog.count, backlog.calls) == (0, 2)


def test_inline_calls_are_counted_in_the_latency_histogram_once_per_batch() -> None:
    class Counting(FakeSubmitter):
        def __init__(self) -> None:
            super().__init__(inline=True)
            self.counted: list[int] = []

        def inline_handled(self, count: int) -> None:
            self.counted.append(count)

    submit = Counting()
    policy = ConversationPolicy(BackoffPolicy(1000, 60_000, 0.0, 3), 30_000, 10.0)
    logic = ConversationLogic(lambda e: e.conversation_key, submit, policy, None, Clock())
    logic.on_batch([*events("wamid.1", "wamid.2", "wamid.3")])
    logic.on_batch([claimed(k, t) for k, t in submit.claims])
    assert submit.counted == [3]


def test_observing_zeros_at_once_equals_observing_each() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    each = Histogram("each_seconds", "", buckets=(0.005, 1), registry=registry)
    once = Histogram("once_seconds", "", buckets=(0.005, 1), registry=registry)
    for _ in range(5):
        each.observe(0.0)
    metrics.observe_zeros(once, 5)

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        (family,) = [m for m in registry.collect() if m.name == name]
        return [
            (s.name.replace(name, ""), s.labels, s.value)
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples("each_seconds") == samples("once_seconds")


def test_a_snapshot_pickles_its_events_as_plain_values_and_resumes_them_exactly() -> None:
    # Bytewax pickles each conversation's snapshot on its own at every epoch close: a model,
    # an enum or an aware datetime in it each cost class lookups (most of the epoch's pause).
    from wa_worker.operators import reorder

    logic, _submit, clock = make()
    a, b = events("wamid.a", "wamid.b")
    a = a.model_copy(update={"received_at": clock.now})
    logic.on_batch([a, b])
    state = logic.snapshot()
    state.held = [reorder.Held((1.0, 2.0, 0), b, clock.now)]
    blob = pickle.dumps(state)
    for name in (b"WebhookEvent", b"EventKind", b"SourcePosition", b"Phase", b"datetime"):
        assert name not in blob
    resumed = pickle.loads(blob)
    assert [p.event for p in resumed.queue] == [a, b]
    assert [p.__dict__ for p in resumed.queue] == [p.__dict__ for p in logic.snapshot().queue]
    assert resumed.queue[0].event.received_at.tzinfo is UTC
    assert resumed.queue[1].due_at == clock.now and resumed.queue[1].due_at.tzinfo is UTC
    ((held),) = resumed.held
    assert (held.key, held.event, held.arrived_at) == ((1.0, 2.0, 0), b, clock.now)


def test_a_redelivery_of_an_event_claimed_ahead_and_done_is_claimed_itself() -> None:
    # b's claim taken ahead came back as the head's own (a was dropped as done in the same
    # batch): b's redelivery must not wait for b's claim (the worker stalled on it).
    logic, submit, _ = make(inline=True)
    a, b = events("wamid.a", "wamid.b")
    logic.on_batch([a, b])
    (_, token_a), (_, token_b) = submit.claims
    out, discard = logic.on_batch(
        [
            ClaimResult("wamid.a", token_a, ClaimStatus.DONE),
            ClaimResult("wamid.b", token_b, ClaimStatus.DONE),
        ]
    )
    assert out == [] and discard
    (c,) = events("wamid.c")
    logic.on_batch([b, c])  # b again (Meta redelivered it), then a new event
    assert [k for k, _ in submit.claims] == ["wamid.a", "wamid.b", "wamid.b", "wamid.c"]
    token_b2 = submit.claims[2][1]
    assert token_b2 != token_b
    out, _ = logic.on_batch([ClaimResult("wamid.b", token_b2, ClaimStatus.DONE)])
    out, discard = logic.on_batch([claimed("wamid.c", submit.claims[3][1])])
    assert [o.event.event_key for o in out] == ["wamid.c"] and discard


def test_a_claim_taken_ahead_that_comes_back_busy_for_the_head_is_polled_again() -> None:
    logic, submit, clock = make()
    a, b = events("wamid.a", "wamid.b")
    logic.on_batch([a, b])
    (_, token_a), (_, token_b) = submit.claims
    logic.on_batch(
        [
            ClaimResult("wamid.a", token_a, ClaimStatus.DONE),
            ClaimResult("wamid.b", token_b, ClaimStatus.BUSY, 0, 20_000),
        ]
    )
    due = logic.notify_at()
    assert due is not None
    clock.now = due
    logic.on_notify()
    assert submit.claims[-1] == ("wamid.b", token_b)  # polled: claimed again
    assert len(submit.claims) == 3


class RandomRedis(FakeSubmitter):
    """Claims answered later, in any order and batching, with any status."""

    def __init__(self) -> None:
        super().__init__(inline=True)
        self.pending: list[tuple[str, str]] = []

    def claim(self, route_key: str, event_key: str, token: str, lease_ms: int) -> None:
        super().claim(route_key, event_key, token, lease_ms)
        self.pending.append((event_key, token))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_claims_ahead_in_any_order_and_outcome_never_stall_or_reorder(data: st.DataObject) -> None:
    submit, clock = RandomRedis(), Clock()
    policy = ConversationPolicy(BackoffPolicy(1000, 60_000, 0.0, 3), 30_000, 10.0)
    logic = ConversationLogic(lambda e: e.conversation_key, submit, policy, None, clock)
    pool = events(*(f"wamid.{i}" for i in range(8)))
    statuses = st.sampled_from(
        [ClaimStatus.CLAIMED] * 4 + [ClaimStatus.DONE, ClaimStatus.BUSY, ClaimStatus.ERROR]
    )
    entered: list[str] = []  # event keys in the order they were queued (redeliveries again)
    processed: list[str] = []

    def results(count: int, status: st.SearchStrategy[ClaimStatus]) -> list[Any]:
        picked = data.draw(st.permutations(range(len(submit.pending))))[:count]
        batch = [submit.pending[i] for i in picked]
        submit.pending = [p for i, p in enumerate(submit.pending) if i not in picked]
        return [ClaimResult(k, t, data.draw(status), 0, 100) for k, t in batch]

    def run(values: list[Any]) -> None:
        out, _ = logic.on_batch(values) if values else logic.on_notify()
        processed.extend(o.event.event_key for o in out if isinstance(o, Processed))

    for _ in range(data.draw(st.integers(1, 25))):
        action = data.draw(st.sampled_from(["events", "results", "time"]))
        if action == "events":
            new = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4))
            queued = {p.event.event_key for p in logic.snapshot().queue}
            for e in new:
                if e.event_key not in queued:
                    entered.append(e.event_key)
                    queued.add(e.event_key)
            run(list(new))
        elif action == "results" and submit.pending:
            run(results(data.draw(st.integers(1, len(submit.pending))), statuses))
        elif (due := logic.notify_at()) is not None:
            clock.now = max(clock.now, due)
            run([])
    for _ in range(100):  # from here Redis answers every claim: all must finish
        if not logic.snapshot().queue:
            break
        if submit.pending:
            run(results(len(submit.pending), st.just(ClaimStatus.CLAIMED)))
        else:
            due = logic.notify_at()
            assert due is not None, "stalled: work left, no claim in flight, no wake-up"
            clock.now = max(clock.now, due)
            run([])
    assert not logic.snapshot().queue
    # Handled in the order they were queued (those dropped as done are skipped).
    positions = iter(range(len(entered)))
    for key in processed:
        assert any(entered[i] == key for i in positions)


def test_a_claim_taken_ahead_that_was_busy_is_asked_again_at_once_when_its_turn_comes() -> None:
    # A redelivery claimed ahead while its first copy was still being finished is busy; by its
    # turn that copy is usually done. Waiting a poll's delay held the conversation 250 ms.
    logic, submit, _ = make(inline=True)
    a, b = events("wamid.a", "wamid.b")
    logic.on_batch([a, b])
    (_, token_a), (_, token_b) = submit.claims
    logic.on_batch(
        [
            ClaimResult("wamid.b", token_b, ClaimStatus.BUSY, 0, 20_000),
            ClaimResult("wamid.a", token_a, ClaimStatus.CLAIMED),
        ]
    )
    assert submit.claims[2:] == [("wamid.b", token_b)]  # at once, in the same pass
    out, discard = logic.on_batch([ClaimResult("wamid.b", token_b, ClaimStatus.DONE)])
    assert out == [] and discard


def test_a_redelivery_of_an_event_just_processed_here_is_dropped_without_a_claim() -> None:
    # Its claim would be busy until the first copy's done marker is written, and the polls'
    # growing waits held every later event of the conversation (seconds of p99).
    logic, submit, _ = make(inline=True)
    a, b = events("wamid.a", "wamid.b")
    logic.on_batch([a, b])
    logic.on_batch([claimed(k, t) for k, t in submit.claims])  # a and b processed
    (c,) = events("wamid.c")
    logic.on_batch([c])
    before = metrics.DUPLICATES._value.get()
    logic.on_batch([a])  # Meta redelivers a
    assert metrics.DUPLICATES._value.get() == before + 1
    assert [k for k, _ in submit.claims] == ["wamid.a", "wamid.b", "wamid.c"]


def test_a_dead_lettered_event_is_not_remembered_so_a_redrive_is_handled() -> None:
    logic, submit, _ = make()
    a, b = events("wamid.a", "wamid.b")
    logic.on_batch([a, b])
    (_, token_a), _ = submit.claims
    logic.on_batch([claimed("wamid.a", token_a)])
    logic.on_batch([HandleResult("wamid.a", token_a, HandleStatus.PERMANENT, error="422")])
    logic.on_batch([a])  # `dlq redrive` sends it again
    assert [p.event.event_key for p in logic.snapshot().queue] == ["wamid.b", "wamid.a"]
    assert [k for k, _ in submit.claims].count("wamid.a") == 2  # claimed again (ahead)


def test_observing_a_batch_at_once_equals_observing_each() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    each = Histogram("each_seconds", "", buckets=(0.005, 0.1, 1), registry=registry)
    once = Histogram("once_seconds", "", buckets=(0.005, 0.1, 1), registry=registry)
    amounts = [-0.5, 0.0, 0.005, 0.0051, 0.1, 0.75, 1.0, 2.0, 400.0, 0.003]
    for amount in amounts:
        each.observe(max(0.0, amount))  # the sink's records: a clock skew counts as 0
    metrics.observe_all(once, amounts)
    metrics.observe_all(once, [])

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        (family,) = [m for m in registry.collect() if m.name == name]
        return [
            (s.name.replace(name, ""), s.labels, round(s.value, 9))
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples("each_seconds") == samples("once_seconds")
