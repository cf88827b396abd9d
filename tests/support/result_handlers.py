"""HANDLER_CALLABLE targets for the tests: handlers whose results the worker cannot write."""

from __future__ import annotations

import base64
import os
from typing import Any

from wa_worker.models.records import WebhookEvent


def echo(event: WebhookEvent) -> Any:
    """Echoes the event, as a careless handler does: a 2.8 MB event makes a 5.6 MB record."""
    return event.for_handler()


def unserialisable(event: WebhookEvent) -> Any:
    """A result JSON cannot hold (a tuple key) for `*.bad` events, a plain one otherwise."""
    if event.event_key.endswith(".bad"):
        return {(1, 2): "x"}
    return {"ok": True}


def incompressible(event: WebhookEvent) -> Any:
    """~2 MB that lz4 cannot shrink much, for `*.big` events: under the producer's limit, over a
    topic's smaller one, so the broker (not librdkafka) refuses it."""
    if event.event_key.endswith(".big"):
        return base64.b64encode(os.urandom(1_500_000)).decode()
    return {"ok": True}


def status_order(event: WebhookEvent) -> Any:
    """What a status handler sees of its message's order (tests/test_status_order.py)."""
    return {"current_status": event.current_status, "superseded": event.superseded}
