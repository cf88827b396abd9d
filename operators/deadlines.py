"""How long an event may be retried, and when it is too old to matter. Pure.

Meta redelivers a webhook for up to 7 days, and a reply to a customer's message is only
possible within 24 hours of it (the customer-service window): retrying past that serves no
one. An event's deadline counts from its own time (Meta's `timestamp`, else the edge's receive
time): RETRY_DEADLINE_S when set, for every event; unset, only inbound customer messages have
one, the end of their 24-hour window. A retry that would start past the deadline is not made:
the event goes to the DLQ as `deadline_exceeded`. MAX_EVENT_AGE_S (unset: off) marks events
older than that when first read as `stale`; STALE_EVENTS=skip writes their processed record
without calling the handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from wa_worker.models.event_time import event_time
from wa_worker.models.records import EventKind, WebhookEvent

CUSTOMER_SERVICE_WINDOW_S = 24 * 3600.0


@dataclass(frozen=True)
class Deadline:
    at: datetime
    rule: str  # which setting set it, for the dead letter's reason


@dataclass(frozen=True)
class DeadlinePolicy:
    retry_deadline_s: float | None = None  # RETRY_DEADLINE_S
    message_window_s: float | None = None  # inbound messages when RETRY_DEADLINE_S is unset
    max_event_age_s: float | None = None  # MAX_EVENT_AGE_S
    skip_stale: bool = False  # STALE_EVENTS=skip

    def deadline(self, event: WebhookEvent) -> Deadline | None:
        if self.retry_deadline_s is not None:
            limit, rule = self.retry_deadline_s, "RETRY_DEADLINE_S"
        elif self.message_window_s is not None and event.kind is EventKind.MESSAGE:
            limit, rule = self.message_window_s, "the 24-hour customer-service window"
        else:
            return None
        start = own_time(event)
        if start is None:
            return None
        return Deadline(datetime.fromtimestamp(start + limit, UTC), rule)

    def is_stale(self, event: WebhookEvent, now: datetime) -> bool:
        if self.max_event_age_s is None:
            return False
        start = own_time(event)
        return start is not None and now.timestamp() - start > self.max_event_age_s


def own_time(event: WebhookEvent) -> float | None:
    """Meta's time of the event, else the edge's receive time."""
    stamp = event_time(event)
    if stamp is None and event.received_at is not None:
        stamp = event.received_at.timestamp()
    return stamp


def policy_from(
    retry_deadline_s: float | None, max_event_age_s: float | None, skip_stale: bool
) -> DeadlinePolicy:
    """The worker's policy: unset RETRY_DEADLINE_S leaves messages their 24-hour window."""
    return DeadlinePolicy(
        retry_deadline_s=retry_deadline_s,
        message_window_s=CUSTOMER_SERVICE_WINDOW_S,
        max_event_age_s=max_event_age_s,
        skip_stale=skip_stale,
    )
