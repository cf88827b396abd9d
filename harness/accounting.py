"""The accounting: where did every event end up? Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from devtools.handler_server import Call
from devtools.kafka import Record
from wa_worker.models.headers import EVENT_KEY


@dataclass
class Report:
    scenario: str
    sent: int
    unique: int
    processed: int
    dead_lettered: int
    lost: int
    duplicates_on_processed: int
    duplicate_handler_successes: int
    restarts: int
    poison_missing: int = 0
    note: str = ""
    stalls_s: tuple[float, ...] = ()  # broker failovers: longest time without output, each
    stall_s: float | None = None  # longest time without a handler success after the fault
    unexplained_repeats: int = 0  # repeats a failover's lost writes cannot explain
    markers_missing: int | None = None  # events done on Kafka without a done marker at the end
    lost_window_s: float | None = None  # writes lost until this long after a failover ended


def longest_gap(times: Sequence[float], since: float) -> float:
    """The longest stretch without progress from `since` on: `times` are the moments of
    progress (handler successes); the wait from `since` to the first one counts too."""
    later = sorted(t for t in times if t >= since)
    edges = [since, *later]
    return max((b - a for a, b in pairwise(edges)), default=0.0)


def account(
    scenario: str,
    sent: int,
    unique_events: set[str],
    poison: Iterable[bytes],
    processed: list[Record],
    dlq: list[Record],
    calls: list[Call],
    restarts: int,
    note: str = "",
) -> Report:
    processed_keys = Counter(r.header(EVENT_KEY) for r in processed)
    dlq_keys = {r.header(EVENT_KEY) for r in dlq if r.header(EVENT_KEY)}
    dlq_values = Counter(r.value for r in dlq)
    successes = Counter(c.event_key for c in calls if 200 <= c.status < 300)
    missing_poison = sum(1 for p in poison if dlq_values[p] == 0)
    return Report(
        scenario=scenario,
        sent=sent,
        unique=len(unique_events),
        processed=len(unique_events & set(processed_keys)),
        dead_lettered=len(unique_events & dlq_keys),
        # Lost: an event on neither topic, or a poison record missing from the DLQ.
        lost=len(unique_events - set(processed_keys) - dlq_keys) + missing_poison,
        duplicates_on_processed=sum(n - 1 for n in processed_keys.values() if n > 1),
        duplicate_handler_successes=sum(n - 1 for n in successes.values() if n > 1),
        restarts=restarts,
        poison_missing=missing_poison,
        note=note,
    )


def table(reports: list[Report]) -> str:
    headers = [
        "scenario",
        "sent",
        "unique",
        "processed",
        "DLQ",
        "lost",
        "dup processed",
        "dup handler ok",
        "restarts",
        "stall s",
    ]
    rows = [
        [
            r.scenario,
            r.sent,
            r.unique,
            r.processed,
            r.dead_lettered,
            r.lost,
            r.duplicates_on_processed,
            r.duplicate_handler_successes,
            r.restarts,
            "-" if r.stall_s is None else f"{r.stall_s:.1f}",
        ]
        for r in reports
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)) for row in rows]
    notes = [f"  {r.scenario}: {r.note}" for r in reports if r.note]
    return "\n".join(lines + notes)
