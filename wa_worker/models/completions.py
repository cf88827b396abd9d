"""Results of asynchronous work (Redis claims, handler calls) fed back into the dataflow.

They travel through Bytewax exchanges, so they are small, plain and picklable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from wa_worker.models.records import WebhookEvent


class ClaimStatus(StrEnum):
    CLAIMED = "claimed"  # ours to process now
    DONE = "done"  # processed before: a duplicate
    BUSY = "busy"  # someone holds a live lease (in flight, or a crashed run's lease)
    ERROR = "error"  # Redis unreachable: try again later


@dataclass(frozen=True, slots=True)
class ClaimResult:
    event_key: str
    token: str
    status: ClaimStatus
    attempts: int = 0
    wait_ms: int = 0
    error: str | None = None
    prior_rank: int = 0  # a claimed status: the highest rank above its own seen (status_order)


class HandleStatus(StrEnum):
    OK = "ok"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class HandleResult:
    event_key: str
    token: str
    status: HandleStatus
    result: Any = None
    error: str | None = None
    status_code: int | None = None
    retry_after_s: float | None = None
    latency_s: float = 0.0


Completion = ClaimResult | HandleResult


@dataclass(frozen=True, slots=True)
class Claimed:
    """An event claimed before it reached its conversation (operators/preclaim.py), with the
    token its claim used, when the claim was sent, and its answer (None: not known, Redis
    failed or was too slow; the conversation claims it again with the same token)."""

    event: WebhookEvent
    token: str
    sent_at: datetime
    result: ClaimResult | None
