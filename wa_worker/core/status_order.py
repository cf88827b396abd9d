"""The order of a message's statuses, so a late callback never moves a message backwards.

Meta sends the statuses of one message out of order and may skip `delivered` when `read`
comes. Ranks: sent < delivered < read < played, and `failed` above them all: a message id is
one send attempt (a resend gets a new id), so once it failed nothing later changes that
attempt's outcome, and a late `sent` or `delivered` must not make it look delivered. A status
not ranked here (one Meta may add) is left out of the order: never superseded, its record's
`current_status` is its own. The dedupe stores find a message's highest status from the
markers of its statuses (core/dedupe.py): the status's claim looks up the higher ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

RANKS: dict[str, int] = {"sent": 1, "delivered": 2, "read": 3, "played": 4, "failed": 5}
NAMES: dict[int, str] = {rank: name for name, rank in RANKS.items()}


class StatusOf(NamedTuple):
    """What a status event's claim asks for: its message's id and its own rank. (A tuple:
    read for every event, at several steps; a frozen dataclass cost three times as much.)"""

    message_id: str
    rank: int


def status_of(event_key: str) -> StatusOf | None:
    """The message id and rank in a status's event key (`<message id>:<status>`); None when
    the key is not one of a ranked status. Read from the key alone because done markers and
    attempt records carry no more, and all three must pick the same bucket."""
    message_id, sep, status = event_key.rpartition(":")
    rank = RANKS.get(status) if sep and message_id else None
    return StatusOf(message_id, rank) if rank else None


def above(status: StatusOf) -> list[tuple[int, str]]:
    """The event keys of the statuses ranked above this one, highest first, with their rank."""
    return [(r, f"{status.message_id}:{NAMES[r]}") for r in ranks_above(status.rank)]


def ranks_above(rank: int) -> tuple[int, ...]:
    """The ranks above `rank`, highest first."""
    return _ABOVE[rank]


_DESCENDING = sorted(NAMES, reverse=True)
_ABOVE = {rank: tuple(r for r in _DESCENDING if r > rank) for rank in NAMES}


@dataclass(frozen=True, slots=True)
class StatusOrder:
    current_status: str  # the message's highest status, this one included
    superseded: bool  # a strictly higher status of the message was seen before this one


def order(own: StatusOf, prior_rank: int) -> StatusOrder:
    """`prior_rank`: the highest rank above its own seen before this claim (0: none). Its own
    marker never counts: a redelivered copy, or a claim resumed after a crash, is not
    superseded by itself."""
    return StatusOrder(NAMES[max(prior_rank, own.rank)], prior_rank > own.rank)
