"""An event's dedupe marker as the DLQ re-drive sees it (looked at, never changed): tests ask
the store rather than read its key layout."""

from __future__ import annotations

import redis

from wa_worker.core.dedupe import DAY_MS, DedupeAdmin, DedupeKeys, MarkerState


def marker_state(client: redis.Redis, prefix: str, event_key: str) -> MarkerState:
    admin = DedupeAdmin(client, DedupeKeys(prefix, 7 * DAY_MS))
    return admin.reset_dead_lettered([event_key], dry_run=True)[event_key]
