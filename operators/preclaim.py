"""Claim a batch's events in Redis before their conversations see them: one round trip.

Without this step, each conversation claims its head itself: the claim goes to the I/O
runtime, its answer comes back through the completion source, and the conversation's logic
runs a second time for it. Claimed here, the whole Bytewax batch travels in one Redis round
trip that the worker waits for (a few ms for thousands of events), and each event reaches
its conversation with its token and its claim's answer: a claim taken ahead
(operators/conversation.py), applied when the event's turn comes, or claimed again then if
it no longer holds (busy, failed, or older than half its lease).

The ranked statuses of a message must be claimed in the order they are handled (a status's
claim reads the higher ones already claimed: core/status_order.py). This step comes after the
reorder window (operators/window.py), so it sees each conversation's events in that order.

Redis slow or down: a batch that fails or times out (REDIS_TIMEOUT_MS) passes its events on
with their tokens and no answer, so their conversations claim them again as theirs. Claiming
here then pauses for `PAUSE_AFTER_FAILURE`, so an outage costs the dataflow one wait per
pause, not one per batch; the conversations' own claims retry meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from wa_worker.core import tracing
from wa_worker.core.dedupe import ClaimReply, ClaimRequest
from wa_worker.core.runtime import claim_result
from wa_worker.models.completions import Claimed
from wa_worker.models.records import WebhookEvent
from wa_worker.operators.conversation import new_token
from wa_worker.settings import Settings

log = logging.getLogger(__name__)

PAUSE_AFTER_FAILURE_S = 5.0

Keyed = tuple[str, WebhookEvent]
KeyedClaim = tuple[str, WebhookEvent | Claimed]


class Claimer(Protocol):
    def claim_now(self, claims: list[ClaimRequest], timeout_s: float) -> list[ClaimReply]: ...


class PreClaim:
    """The step's function (`op.flat_map_batch`): each event of the batch, claimed if it may be."""

    def __init__(
        self,
        claimer: Callable[[], Claimer],
        lease_ms: int,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        self._claimer = claimer  # the process's I/O runtime, started on first use
        self._lease_ms = lease_ms
        self._timeout_s = timeout_s
        self._clock = clock
        self._paused_until = 0.0
        self._enabled = enabled

    def __call__(self, batch: list[Keyed]) -> list[KeyedClaim]:
        if not batch or not self._enabled or self._clock() < self._paused_until:
            return list(batch)
        requests = [
            ClaimRequest(event.event_key, new_token(), self._lease_ms) for _, event in batch
        ]
        sent_at = datetime.now(UTC)
        try:
            replies: list[ClaimReply | None] = list(
                self._claimer().claim_now(requests, self._timeout_s)
            )
        except Exception as exc:  # noqa: BLE001  (Redis slow or down: conversations claim)
            self._paused_until = self._clock() + PAUSE_AFTER_FAILURE_S
            log.warning(
                "claiming %d events before their conversations failed (%s); they claim "
                "them instead, and this step pauses for %.0f s",
                len(requests),
                exc or type(exc).__name__,
                PAUSE_AFTER_FAILURE_S,
            )
            replies = [None] * len(requests)
        return [
            (
                key,
                Claimed(
                    event, request.token, sent_at, None if r is None else claim_result(request, r)
                ),
            )
            for (key, event), request, r in zip(batch, requests, replies, strict=True)
        ]


def pre_claim(settings: Settings, claimer: Callable[[], Claimer]) -> PreClaim:
    """The worker's step: leases as its conversations take them (`ConversationLogic`).
    Off with traces: an event's span opens when it enters its queue, after an early claim,
    whose round trip the trace would then miss; the conversations claim, linked to it."""
    return PreClaim(
        claimer,
        lease_ms=settings.handler_timeout_ms + settings.claim_lease_ms,
        timeout_s=settings.redis_timeout_ms / 1000,
        enabled=not tracing.ENABLED,
    )
