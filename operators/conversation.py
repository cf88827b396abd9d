"""Per-conversation processing: claim in Redis, call the handler, retry with backoff, emit.

Retry design. A Bytewax dataflow is acyclic, so a failed event cannot loop back to an earlier
step. We keep one `stateful_batch` logic per conversation key that *owns* its events until they
have an outcome: it starts asynchronous work (a Redis claim, a handler call) on the process's
I/O runtime and receives the result later as an ordinary item, merged into its input from the
completion source. A retry is just a due time in the state plus `notify_at`, so nothing sleeps
and other conversations keep flowing. We chose this over a fixed chain of "wait, then attempt"
stages unrolled from MAX_RETRIES because that chain would hold a waiting event's successors in
the same conversation at every stage, needs as many steps as retries (and a redeploy to change
MAX_RETRIES would orphan their state), and still needs timers. The state (queue, attempts, due
times) is snapshotted by Bytewax recovery, so pending retries survive a restart; the attempt
count is also kept with the Redis claim, so losing the recovery directory does not reset it.

Order: only the head of a conversation's queue is handled, so events of one conversation are
handled in the order they enter the queue, which is the order they arrive: with a reorder
window (REORDER_WINDOW_MS), the window step before this one (operators/window.py) lets them
through in Meta's timestamp order. With ordering off, the
dataflow keys by event instead of conversation, every event is its own queue and nothing waits.

Claim ahead: while the head is in flight (and has not failed), up to CLAIM_AHEAD events behind
it are claimed too, in the same Redis batch, so the next event does not wait a round trip for
its own claim once the head is done. A result that comes early is kept aside (not snapshotted:
a resumed state claims everything again) and applied when its event reaches the head, as if it
came then; a busy or failed one is asked again then instead (it may no longer hold). A claim
is a lease of HANDLER_TIMEOUT_MS + CLAIM_LEASE_MS from when it was sent: an event that reaches
the head more than CLAIM_LEASE_MS / 2 after its claim was sent is claimed again (same token:
still ours unless the lease ran out and another run took it), so a handler call always starts
with at least HANDLER_TIMEOUT_MS + CLAIM_LEASE_MS / 2 of its lease left. So does a claimed head
whose call waited (the circuit breaker open, a drain): past half its lease, it is claimed again
before the call. The lease must outlast the call and the done marker written after it, or a
redelivered copy, claimed then, would be handled again.
A status claimed ahead counts as seen by earlier statuses of its message claimed after it (only
when an earlier claim had to be retried, BUSY or a Redis error): those read as superseded.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol, TypeVar

from bytewax.operators import StatefulBatchLogic

from wa_worker.core import metrics, tracing
from wa_worker.core.status_order import order, status_of
from wa_worker.models.completions import (
    Claimed,
    ClaimResult,
    ClaimStatus,
    Completion,
    HandleResult,
    HandleStatus,
)
from wa_worker.models.records import (
    DeadLetter,
    ErrorClass,
    EventKind,
    Outcome,
    Processed,
    WebhookEvent,
)
from wa_worker.operators import snapshot_codec
from wa_worker.operators.backoff import BackoffPolicy, poll_delay_s
from wa_worker.operators.deadlines import Deadline, DeadlinePolicy, policy_from
from wa_worker.settings import Settings, StaleEvents, StatusSuperseded

Clock = Callable[[], datetime]
_T = TypeVar("_T")
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)  # before the first batch: no time read yet

# Claim tokens: a random prefix per process start and a counter (uuid4 per event costs a
# system call); unique across processes and restarts.
_TOKEN_PREFIX = os.urandom(8).hex()
_TOKEN_COUNTER = itertools.count()


def new_token() -> str:
    return f"{_TOKEN_PREFIX}-{next(_TOKEN_COUNTER)}"


PAUSED_RECHECK = timedelta(milliseconds=500)
# Events behind the head claimed before their turn, per conversation: enough for a handler's
# answer to find the next claims done, few enough that a queue after an outage (thousands)
# does not claim far ahead of what the lease covers.
CLAIM_AHEAD = 128
# Event keys a conversation logic remembers as processed: a redelivery of one of them (Meta
# retried a delivery we had answered) is dropped at once. Asking Redis answered busy until the
# first copy's done marker was written, and the polls' growing waits held the conversation.
RECENTLY_PROCESSED = 256
# The longest wait before claiming again after Redis failed: one batch per second is cheap, and
# a longer wait would add itself to every outage's stall.
REDIS_ERROR_POLL_MAX_S = 1.0


class WorkSubmitter(Protocol):
    """Starts asynchronous work whose result comes back as a Completion for `route_key`."""

    def claim(self, route_key: str, event_key: str, token: str, lease_ms: int) -> None: ...
    def handle(self, route_key: str, event: WebhookEvent, token: str) -> None: ...
    def handle_inline(self, event: WebhookEvent, token: str) -> HandleResult | None:
        """The result right away when the handler needs no I/O (the default pass-through).
        It is the head's own: its event key and token are not checked (may be left empty)."""
        ...

    def record_attempts(self, event_key: str, token: str, attempts: int, lease_ms: int) -> None: ...
    def inline_handled(self, count: int) -> None:
        """`count` events answered by `handle_inline` (counted once per batch)."""
        ...


class HandlerGate(Protocol):
    def is_open(self) -> bool: ...
    def admit_call(self) -> bool: ...


class Counter(Protocol):
    def add(self, count: int = 1) -> None: ...
    def done(self, count: int = 1) -> None: ...


class Uncounted:
    def add(self, count: int = 1) -> None:
        pass

    def done(self, count: int = 1) -> None:
        pass


class OpenGate:
    def is_open(self) -> bool:
        return False

    def admit_call(self) -> bool:
        return True


@dataclass(frozen=True)
class ConversationPolicy:
    backoff: BackoffPolicy
    lease_ms: int
    handler_timeout_s: float
    # Retry deadlines and staleness (operators/deadlines.py); the default bounds nothing.
    deadlines: DeadlinePolicy = field(default_factory=DeadlinePolicy)
    skip_superseded: bool = False  # STATUS_SUPERSEDED=skip: no handler call for those

    # Once per policy, not per conversation logic (one is built for each conversation).
    @cached_property
    def fresh(self) -> timedelta:
        """How old a claim taken ahead may be when used (module docstring)."""
        return timedelta(milliseconds=self.lease_ms / 2)


class Phase(StrEnum):
    CLAIM = "claim"
    HANDLE = "handle"


@dataclass
class Pending:
    event: WebhookEvent
    token: str
    phase: Phase = Phase.CLAIM
    due_at: datetime | None = None  # None while the work is in flight
    attempts: int = 0
    polls: int = 0
    first_failure_at: datetime | None = None
    last_error: str | None = None
    last_status_code: int | None = None
    retry_waiting: bool = False  # a retry is scheduled and not yet started
    trial: bool = False  # the call is the open circuit breaker's probe
    # When the lease held now was asked for (or answered: a round trip late at most), or
    # when a retry's extended lease starts counting down: a head whose call waited past
    # half a lease (circuit breaker open, drain) is claimed again before the call.
    leased_at: datetime | None = None

    # Pickled (recovery snapshots) as plain values: operators/snapshot_codec.py.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["event"] = snapshot_codec.pack(self.event)
        state["phase"] = self.phase.value
        for name in _TIMES:
            state[name] = snapshot_codec.pack_time(state[name])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["event"] = snapshot_codec.unpack(state["event"])
        state["phase"] = Phase(state["phase"])  # older snapshots: the enum itself
        for name in _TIMES:
            state[name] = snapshot_codec.unpack_time(state.get(name))
        self.__dict__.update(state)


_TIMES = ("due_at", "first_failure_at", "leased_at")
# Answers to a claim taken ahead that still hold when its event's turn comes.
_KEPT = (ClaimStatus.CLAIMED, ClaimStatus.DONE)


@dataclass
class ConversationState:
    queue: list[Pending] = field(default_factory=list)
    # Snapshots taken while the reorder window was kept here also hold `held`, a heap of
    # events not yet queued (operators/reorder.py): they are queued, in order, on resume.


LogicValue = WebhookEvent | Claimed | Completion


class ConversationLogic(StatefulBatchLogic[LogicValue, Outcome, ConversationState]):
    def __init__(
        self,
        route_key: Callable[[WebhookEvent], str],
        submit: WorkSubmitter,
        policy: ConversationPolicy,
        resume: ConversationState | None,
        clock: Clock = lambda: datetime.now(UTC),
        paused: Callable[[], bool] = lambda: False,
        handler_gate: HandlerGate | None = None,
        backlog: Counter | None = None,
    ) -> None:
        self._route_key = route_key
        self._submit = submit
        self._policy = policy
        self._clock = clock
        # The time of the batch being handled (one clock read per batch), set by each.
        self._t = clock() if resume is not None else _NEVER
        self._paused = paused  # draining: start nothing new
        self._gate = handler_gate or OpenGate()  # the handler's circuit breaker
        self._backlog = backlog or Uncounted()  # events taken in and not finished, per process
        self._state = ConversationState()
        self._queued: set[str] = set()  # event keys queued, for duplicate checks
        # Processed here, newest last (not snapshotted: Redis's done markers are the record).
        self._processed: dict[str, None] = {}
        # Claim ahead (module docstring): event key -> (token, when its claim was sent) for
        # queued events behind the head claimed before their turn, and the results that came.
        # Not snapshotted: a resumed state claims every event again anyway.
        self._ahead: dict[str, tuple[str, datetime]] = {}
        self._early: dict[str, ClaimResult] = {}
        self._fresh = policy.fresh
        # Backlog changes of the batch, told once at its end (the backlog takes a lock).
        self._taken = 0
        self._inline = 0  # events the handler answered inline in this batch
        if resume is not None:
            # Work in flight at the snapshot was lost with the old process, or finished after
            # it. Claim again first, with the same token: an event since marked done is then
            # dropped instead of handled twice, and one still ours carries on.
            now = self._t
            self._state.queue = [_copy(p) for p in resume.queue]
            for p in self._state.queue:
                p.phase, p.due_at = Phase.CLAIM, p.due_at or now
            metrics.RETRIES_PENDING.inc(sum(p.retry_waiting for p in self._state.queue))
            if tracing.ENABLED:  # the old process's spans died with it: a new one each
                for p in self._state.queue:
                    p.event = tracing.start_event(p.event, resumed=True)
            # Held in this state's window before the window became its own step
            # (operators/window.py): a restart outlasts the window, so they queue now.
            for h in sorted(getattr(resume, "held", [])):
                self._queue_event(h.event, h.token)
            self._queued = {p.event.event_key for p in self._state.queue}
            self._backlog.add(len(self._state.queue))

    def on_batch(self, values: list[LogicValue]) -> tuple[Iterable[Outcome], bool]:
        out: list[Outcome] = []
        self._t = self._clock()
        for value in values:
            if isinstance(value, Claimed):
                self._enqueue(value.event, value)
            elif isinstance(value, WebhookEvent):
                self._enqueue(value)
            elif isinstance(value, ClaimResult):
                self._on_claim(value, out)
            else:
                self._on_handled(value, out)
        self._pump(out)
        self._settle()
        return out, self._idle()

    def on_notify(self) -> tuple[Iterable[Outcome], bool]:
        out: list[Outcome] = []
        self._t = self._clock()
        self._pump(out)
        self._settle()
        return out, self._idle()

    def _settle(self) -> None:
        """The batch's counts, told once: backlog and inline handler calls."""
        if self._taken:
            self._backlog.add(self._taken)
            self._taken = 0
        if self._inline:
            self._submit.inline_handled(self._inline)
            self._inline = 0

    def _now(self) -> datetime:
        return self._t

    def notify_at(self) -> datetime | None:
        head = self._head()
        if head is None or head.due_at is None:
            return None
        held = head.phase is Phase.HANDLE and self._gate.is_open()
        if self._paused() or held:
            # Look again later; returning a past time would wake us in a busy loop.
            return max(head.due_at, self._clock() + PAUSED_RECHECK)
        return head.due_at

    def snapshot(self) -> ConversationState:
        # Copies, as Bytewax asks (0.21.1 pickles the snapshot at once, which it does not
        # promise), shallow: the events are frozen. A conversation with nothing left is
        # discarded (`_idle`), so Bytewax asks no snapshot of it.
        return ConversationState(queue=[_copy(p) for p in self._state.queue])

    def _idle(self) -> bool:
        """Nothing queued: the logic can be dropped."""
        return not self._state.queue

    def _head(self) -> Pending | None:
        return self._state.queue[0] if self._state.queue else None

    def _enqueue(self, event: WebhookEvent, claimed: Claimed | None = None) -> None:
        key = event.event_key
        if key in self._queued or key in self._processed:
            metrics.DUPLICATES.inc()
            if claimed is not None:
                self._adopt(claimed)
            return
        self._queued.add(key)
        self._taken += 1
        if self._policy.deadlines.is_stale(event, self._now()):
            event = event.model_copy(update={"stale": True})  # told to the handler
        token = claimed.token if claimed is not None else None
        self._queue_event(event, token, _early_claim(claimed))

    def _queue_event(
        self,
        event: WebhookEvent,
        token: str | None = None,
        early: tuple[datetime, ClaimResult] | None = None,
    ) -> None:
        """Append to the queue. An event claimed before it came (`early`: when its claim was
        sent, and the answer) counts as claimed ahead when every event behind the head is
        too, as `_claim_ahead` keeps them; else it is claimed in its turn, same token."""
        if tracing.ENABLED:
            event = tracing.start_event(event)
        queue = self._state.queue
        pending = Pending(event=event, token=token or new_token(), due_at=self._now())
        if early is not None and (len(queue) <= 1 or queue[-1].event.event_key in self._ahead):
            key = event.event_key
            self._ahead[key] = (pending.token, early[0])
            self._early[key] = early[1]
        queue.append(pending)

    def _adopt(self, copy: Claimed) -> None:
        """A redelivered copy of a queued event, claimed before it came: the claim is
        the copy's (it was free: the event's own claim had not run yet, or had expired), so
        the event takes the copy's token, or its own claim would read busy for a lease."""
        if copy.result is None or copy.result.status is not ClaimStatus.CLAIMED:
            return
        key = copy.event.event_key
        for i, p in enumerate(self._state.queue):
            if p.event.event_key != key:
                continue
            if p.phase is not Phase.CLAIM:
                # Claimed, and its lease ran out: the copy's claim holds now. A call in
                # flight keeps its own token (its answer is matched by it); a head waiting
                # to be called takes the copy's, so it need not claim again.
                if p.due_at is not None:
                    p.token, p.leased_at = copy.token, copy.sent_at
                return
            p.token = copy.token
            if key in self._ahead:
                self._ahead[key] = (copy.token, copy.sent_at)
                self._early[key] = copy.result
            elif i == 0 and p.due_at is None:
                p.due_at = self._now()  # its claim in flight answers for the old token
            return

    def _pop_head(self) -> Pending:
        head = self._state.queue.pop(0)
        key = head.event.event_key
        self._queued.discard(key)
        self._taken -= 1
        if self._ahead:  # its claim taken ahead may have come back as the head's own
            self._ahead.pop(key, None)
            self._early.pop(key, None)
        return head

    def _pump(self, out: list[Outcome]) -> None:
        """Start the head's next piece of work when it is due. A handler that answers inline
        finishes the head here, and the next event's claim starts in the same pass."""
        self._pump_head(out)
        self._claim_ahead()

    def _pump_head(self, out: list[Outcome]) -> None:
        while (head := self._head()) is not None:
            if head.due_at is None or head.due_at > self._now() or self._paused():
                return
            if head.phase is Phase.CLAIM and self._ahead and self._take_ahead(head, out):
                continue
            if head.phase is Phase.HANDLE and self._finish_without_call(head, out):
                continue
            if head.phase is Phase.HANDLE and self._lease_aged(head):
                head.phase = Phase.CLAIM  # same token: still ours unless another run took it
            trial = head.phase is Phase.HANDLE and self._gate.is_open()
            if head.phase is Phase.HANDLE and not self._gate.admit_call():
                return
            head.due_at = None
            if head.retry_waiting:
                head.retry_waiting = False
                metrics.RETRIES_PENDING.dec()
            key = self._route_key(head.event)
            if head.phase is Phase.CLAIM:
                self._submit.claim(key, head.event.event_key, head.token, self._lease_ms(0.0))
                return
            head.attempts += 1
            head.trial = trial
            result = self._submit.handle_inline(head.event, head.token)
            if result is None:
                self._submit.handle(key, head.event, head.token)
                return
            self._inline += 1
            if result.status is HandleStatus.OK:
                self._finish_ok(head, result, out)
            else:
                self._on_handled(result, out)

    def _take_ahead(self, head: Pending, out: list[Outcome]) -> bool:
        """The new head was claimed ahead: its claim is in flight (it comes back as the head's
        own) or answered (applied now). False: not claimed ahead, answered busy or failed (a
        redelivery claimed while its first copy was still being finished: asked again now, not
        after a poll's wait), or so long ago that the lease may end during the call; the
        caller claims it (again)."""
        key = head.event.event_key
        ahead = self._ahead.pop(key, None)
        if ahead is None or ahead[0] != head.token:
            return False
        early = self._early.pop(key, None)
        if early is None:
            head.due_at = None
            return True
        if early.status not in _KEPT or self._now() - ahead[1] > self._fresh:
            return False
        head.due_at = None
        self._on_claim(early, out)
        head.leased_at = ahead[1]  # leased since it was sent, not since it was applied
        return True

    def _lease_aged(self, head: Pending) -> bool:
        """The head's lease may end during its call (module docstring)."""
        return head.leased_at is None or self._now() - head.leased_at > self._fresh

    def _claim_ahead(self) -> None:
        """Claim the events behind an in-flight head (module docstring). Those claimed
        ahead are queue[1 : 1 + len(self._ahead)] (the queue changes only at its ends), or
        queue[0 : len(self._ahead)] until the pump takes the new head's: then none is added.
        Not behind a head that failed or polls (a retry, Redis down, a busy claim): it is
        likely to wait again, and claims taken now would age out meanwhile."""
        queue = self._state.queue
        start = 1 + len(self._ahead)
        if start >= len(queue) or start > CLAIM_AHEAD:
            return
        head = queue[0]
        if head.due_at is not None or head.first_failure_at is not None or head.polls:
            return
        if head.event.event_key in self._ahead or self._paused():
            return
        now, lease_ms = self._now(), self._lease_ms(0.0)
        for p in queue[start : CLAIM_AHEAD + 1]:
            key = p.event.event_key
            self._ahead[key] = (p.token, now)
            self._submit.claim(self._route_key(p.event), key, p.token, lease_ms)

    def _finish_without_call(self, head: Pending, out: list[Outcome]) -> bool:
        """A claimed event that gets no handler call: a stale one to skip, or a retry (after a
        restart, or of attempts counted by an earlier run) that would start past its deadline."""
        deadlines = self._policy.deadlines
        if head.event.stale and deadlines.skip_stale:
            self._end_retry_wait(head)
            self._pop_head()
            out.append(Processed(event=head.event, attempts=head.attempts, skipped="stale"))
            return True
        deadline = deadlines.deadline(head.event) if head.attempts else None
        if deadline is not None and self._now() > deadline.at:
            self._end_retry_wait(head)
            self._dead_letter(head, ErrorClass.DEADLINE_EXCEEDED, out, deadline)
            return True
        return False

    def _end_retry_wait(self, head: Pending) -> None:
        if head.retry_waiting:
            head.retry_waiting = False
            metrics.RETRIES_PENDING.dec()

    def _current(self, event_key: str, token: str) -> Pending | None:
        head = self._head()
        if head is None or head.event.event_key != event_key or head.token != token:
            return None  # stale: a result for work this state no longer waits for
        return head

    def _on_claim(self, result: ClaimResult, out: list[Outcome]) -> None:
        head = self._current(result.event_key, result.token)
        if head is None:
            ahead = self._ahead.get(result.event_key)
            if ahead is not None and ahead[0] == result.token:
                self._early[result.event_key] = result  # applied when its turn comes
            return
        if self._ahead:  # a claim taken ahead that came back once its event was the head
            self._ahead.pop(result.event_key, None)
        now = self._now()
        if result.status is ClaimStatus.CLAIMED:
            head.phase, head.polls, head.due_at, head.leased_at = Phase.HANDLE, 0, now, now
            head.attempts = max(head.attempts, result.attempts)
            if head.event.kind is EventKind.STATUS:
                head.event = _ordered(head.event, result.prior_rank)
                if head.event.superseded and self._policy.skip_superseded:
                    self._pop_head()
                    out.append(
                        Processed(event=head.event, attempts=head.attempts, skipped="superseded")
                    )
                    return
            if self._policy.backoff.exhausted(head.attempts):
                self._dead_letter(head, ErrorClass.RETRIES_EXHAUSTED, out)
        elif result.status is ClaimStatus.DONE:
            metrics.DUPLICATES.inc()
            self._pop_head()
            if tracing.ENABLED:
                tracing.end_event(head.event.event_key, "duplicate")
        else:
            wait_s = poll_delay_s(head.polls)
            if result.status is ClaimStatus.BUSY:
                wait_s = min(wait_s, result.wait_ms / 1000)
            else:  # Redis failed: back within a second of its return (a failover takes seconds)
                wait_s = min(wait_s, REDIS_ERROR_POLL_MAX_S)
            # An ERROR claim's failed batch was counted once, by the runtime.
            head.polls += 1
            head.due_at = now + timedelta(seconds=max(wait_s, 0.001))

    def _on_handled(self, result: HandleResult, out: list[Outcome]) -> None:
        head = self._current(result.event_key, result.token)
        if head is None:
            return
        if result.status is HandleStatus.OK:
            self._finish_ok(head, result, out)
            return
        now = self._now()
        if result.status is HandleStatus.TRANSIENT and head.trial:
            # A failed probe of a handler known to be down: not this event's fault, so it
            # costs no attempt; the event waits for the breaker like the others.
            head.attempts -= 1
            head.trial = False
            head.due_at = now + PAUSED_RECHECK
            return
        head.first_failure_at = head.first_failure_at or now
        head.last_error, head.last_status_code = result.error, result.status_code
        if result.status is HandleStatus.PERMANENT:
            self._dead_letter(head, ErrorClass.HANDLER_PERMANENT, out)
        elif self._policy.backoff.exhausted(head.attempts):
            self._dead_letter(head, ErrorClass.RETRIES_EXHAUSTED, out)
        else:
            delay_s = self._policy.backoff.delay_s(head.attempts - 1, result.retry_after_s)
            deadline = self._policy.deadlines.deadline(head.event)
            if deadline is not None and now + timedelta(seconds=delay_s) > deadline.at:
                # The retry would come too late to matter: give up now, not at the deadline.
                self._dead_letter(head, ErrorClass.DEADLINE_EXCEEDED, out, deadline)
                return
            head.due_at = now + timedelta(seconds=delay_s)
            head.leased_at = head.due_at  # record_attempts: the lease covers the wait
            head.retry_waiting = True
            metrics.RETRIED.inc()
            metrics.RETRIES_PENDING.inc()
            self._submit.record_attempts(
                head.event.event_key, head.token, head.attempts, self._lease_ms(delay_s)
            )

    def _finish_ok(self, head: Pending, result: HandleResult, out: list[Outcome]) -> None:
        self._pop_head()
        processed = self._processed
        processed[head.event.event_key] = None
        if len(processed) > RECENTLY_PROCESSED:
            del processed[next(iter(processed))]
        out.append(
            Processed.handled(
                head.event, result.result, head.attempts, datetime.now(UTC), result.latency_s
            )
        )

    def _dead_letter(
        self,
        head: Pending,
        error_class: ErrorClass,
        out: list[Outcome],
        deadline: Deadline | None = None,
    ) -> None:
        self._pop_head()
        last = head.last_error or "attempts were counted by an earlier run (kept in Redis)"
        if deadline is not None:
            reason = (
                f"no retry past the event's deadline {deadline.at.isoformat()} "
                f"({deadline.rule}), after {head.attempts} attempts: {last}"
            )
        elif error_class is ErrorClass.RETRIES_EXHAUSTED:
            reason = f"gave up after {head.attempts} attempts: {last}"
        else:
            reason = f"handler rejected the event: {head.last_error}"
        now = self._now()
        out.append(
            DeadLetter(
                error_class=error_class,
                reason=reason,
                webhook_id=head.event.webhook_id,
                event_key=head.event.event_key,
                conversation_key=head.event.conversation_key,
                attempts=head.attempts,
                first_failure_at=head.first_failure_at or now,
                last_failure_at=now,
                source=head.event.source,
                status_code=head.last_status_code,
                event=head.event,
            )
        )

    def _lease_ms(self, wait_s: float) -> int:
        """A claim must outlive the wait before the next call plus that call itself."""
        needed = (wait_s + self._policy.handler_timeout_s) * 1000 + self._policy.lease_ms
        return int(needed)


def _early_claim(claimed: Claimed | None) -> tuple[datetime, ClaimResult] | None:
    if claimed is None or claimed.result is None:
        return None
    return claimed.sent_at, claimed.result


def _copy(value: _T) -> _T:
    """A shallow copy of a dataclass instance, without `dataclasses.replace`'s call of
    `__init__` with every field (a third of `snapshot()` before)."""
    copied: _T = object.__new__(type(value))
    copied.__dict__.update(value.__dict__)
    return copied


def _ordered(event: WebhookEvent, prior_rank: int) -> WebhookEvent:
    """The status with its place in its message's order, from the rank its claim read."""
    own = status_of(event.event_key)
    if own is None:  # a status not ranked: outside the order
        current = event.payload.get("status")
        return event.changed(current_status=current if isinstance(current, str) else None)
    place = order(own, prior_rank)
    return event.changed(current_status=place.current_status, superseded=place.superseded)


def route_key(ordered: bool) -> Callable[[WebhookEvent], str]:
    """Ordered: one queue per conversation. Unordered: one per event, all concurrent."""
    if ordered:
        return lambda event: event.conversation_key
    return lambda event: event.event_key


def conversation_builder(
    settings: Settings,
    runtime: Callable[[], WorkSubmitter],
    paused: Callable[[], bool] = lambda: False,
    handler_gate: HandlerGate | None = None,
    backlog: Counter | None = None,
) -> Callable[[ConversationState | None], ConversationLogic]:
    policy = ConversationPolicy(
        backoff=BackoffPolicy(
            settings.retry_delay_ms,
            settings.retry_max_delay_ms,
            settings.retry_jitter,
            settings.max_retries,
        ),
        lease_ms=settings.claim_lease_ms,
        handler_timeout_s=settings.handler_timeout_ms / 1000,
        deadlines=policy_from(
            settings.retry_deadline_s,
            settings.max_event_age_s,
            settings.stale_events is StaleEvents.SKIP,
        ),
        skip_superseded=settings.status_superseded is StatusSuperseded.SKIP,
    )
    key = route_key(settings.handler_ordered)

    def build(resume: ConversationState | None) -> ConversationLogic:
        return ConversationLogic(
            key,
            runtime(),
            policy,
            resume,
            paused=paused,
            handler_gate=handler_gate,
            backlog=backlog,
        )

    return build
