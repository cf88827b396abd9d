"""Redis memory per finished event (issue 13: at most 100 B over 100,000 events), measured as
`bench.footprint` does: a fresh redis-server, real batches through the store, the
`used_memory` delta."""

from __future__ import annotations

from bench.footprint import measure, status_keys


def test_a_finished_event_costs_at_most_100_bytes_of_redis_memory() -> None:
    v2 = measure("v2", 100_000)
    assert v2.finished_bytes <= 100, v2
    # The same measure holds the layout it replaced (~300 B) to the bound: it can fail.
    v1 = measure("v1", 5_000)
    assert v1.finished_bytes > 100, v1


def test_a_finished_status_costs_no_more_its_order_included() -> None:
    """A status's order lives in its message's markers: one status per message (the costliest
    case: nothing shared) stays in the same budget."""
    statuses = measure("v2", 30_000, keys=status_keys)
    assert statuses.finished_bytes <= 100, statuses
