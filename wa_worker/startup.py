"""Start-up checks and process setup, run once when the dataflow module is imported."""

from __future__ import annotations

import logging
import sys

from confluent_kafka.admin import AdminClient

from wa_worker.settings import Settings


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def require_kafka_topics(settings: Settings, timeout_s: float = 15.0) -> None:
    """Bytewax's Kafka source waits forever for an unreachable broker: fail fast instead."""
    topics = [
        settings.kafka_inbound_topic,
        settings.kafka_processed_topic,
        settings.kafka_dlq_topic,
    ]
    try:
        # log_level 0: the clear line below replaces librdkafka's connection noise.
        admin = AdminClient({**settings.admin_config(), "log_level": 0})
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001  (any failure means: cannot start)
        _exit(f"KAFKA_BROKERS: cannot reach Kafka at {settings.kafka_brokers} ({exc})")
    missing = [t for t in topics if t not in metadata.topics]
    if missing:
        _exit(
            f"Kafka at {settings.kafka_brokers} has no topic {', '.join(missing)} "
            "(create it, e.g. `scripts/devstack up`, or set the KAFKA_*_TOPIC settings)"
        )


def _exit(message: str) -> None:
    print(f"wa-worker: {message}", file=sys.stderr)
    raise SystemExit(2)
