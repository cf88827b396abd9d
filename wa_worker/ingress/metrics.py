"""The ingress's metrics, in a registry of its own (served at /metrics on INGRESS_PORT)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "wa_ingress_requests",
    "Requests by outcome (accepted, bad_signature, too_large, kafka_unavailable, ...)",
    ["outcome"],
    registry=REGISTRY,
)
BODY_BYTES = Histogram(
    "wa_ingress_body_bytes",
    "Size of the POST bodies read",
    buckets=(1024, 4096, 16_384, 65_536, 262_144, 1_048_576, 3_145_728, 4_194_304),
    registry=REGISTRY,
)
PUBLISH_SECONDS = Histogram(
    "wa_ingress_publish_seconds",
    "From produce to Kafka's acknowledgement (or the give-up), per POST",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
