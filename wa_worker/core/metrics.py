"""Every metric the worker exports, in one place (Prometheus naming, bounded labels)."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

PROCESSED = Counter("wa_events_processed_total", "Events the handler accepted, by kind", ["kind"])
FAILED = Counter("wa_handler_failures_total", "Failed handler calls, by class", ["error_class"])
RETRIED = Counter("wa_events_retried_total", "Retries scheduled after a transient failure")
DEAD_LETTERED = Counter(
    "wa_events_dead_lettered_total", "Records written to the DLQ, by error class", ["error_class"]
)
DUPLICATES = Counter("wa_events_duplicates_total", "Duplicate events dropped by dedupe")
PARSE_ERRORS = Counter("wa_parse_errors_total", "Inbound records that could not be parsed")
EVENTS_SPLIT = Counter("wa_events_received_total", "Events split out of inbound webhooks", ["kind"])
REDIS_ERRORS = Counter(
    "wa_redis_errors_total", "Redis round trips (one per batch) that failed; their work is retried"
)
DONE_MARKS_PENDING = Gauge(
    "wa_done_marks_pending", "Delivered events whose done marker is not yet written to Redis"
)
HANDLER_IN_FLIGHT = Gauge("wa_handler_in_flight", "Handler calls in progress")
HANDLER_LATENCY = Histogram(
    "wa_handler_latency_seconds", "Handler call duration", buckets=_LATENCY_BUCKETS
)
END_TO_END_LATENCY = Histogram(
    "wa_end_to_end_latency_seconds",
    "Envelope timestamp to outcome written",
    buckets=_LATENCY_BUCKETS,
)
REDIS_LATENCY = Histogram(
    "wa_redis_roundtrip_seconds", "Redis pipeline round trip", buckets=_LATENCY_BUCKETS
)
CONSUMER_LAG = Gauge(
    "wa_consumer_lag_messages",
    "Inbound records not yet read: high watermark minus the worker's position",
    ["topic", "partition"],
)
EVENTS_IN_PROGRESS = Gauge(
    "wa_events_in_progress",
    "Events read from Kafka without an outcome yet (input waits at MAX_EVENTS_IN_PROGRESS)",
)
RETRIES_PENDING = Gauge("wa_retries_pending", "Events waiting for their next handler attempt")
CONSUMER_ERRORS = Counter(
    "wa_consumer_errors_total",
    "Errors reported by the Kafka consumer, by librdkafka code",
    ["code"],
)
BREAKER_OPEN = Gauge("wa_handler_circuit_open", "1 while the handler's circuit breaker is open")


def observe_all(histogram: Histogram, amounts: list[float]) -> None:
    """`observe` of each amount (negatives as 0), in one locked increment per bucket touched
    and one of the sum: a batch's end-to-end latencies took two increments per record. Uses
    the client's own bounds and buckets as `observe_zeros` does (the same test checks it)."""
    if not amounts:
        return
    bounds: list[float] = histogram._upper_bounds
    counts = Tally(bisect_left(bounds, max(0.0, amount)) for amount in amounts)
    histogram._sum.inc(sum(max(0.0, amount) for amount in amounts))
    for index, count in counts.items():
        histogram._buckets[index].inc(count)


def observe_zeros(histogram: Histogram, count: int) -> None:
    """`count` observations of 0 s in one step (the inline handler's calls, counted once per
    batch): `observe` per call took two locked increments each. 0 falls in the first bucket
    (every bound is positive) and adds nothing to the sum; the bucket list is the client's
    own (prometheus-client is pinned; tests/test_conversation.py checks it against observe)."""
    if count:
        histogram._buckets[0].inc(count)
