"""The worker's three topics, created or grown idempotently (`wa-worker topics create`, and the
dev stack). Existing topics keep their settings; only a larger partition count is applied."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from wa_worker.settings import Settings

DAY_MS = 86_400_000
# Inbound and processed records are replayable for a few days; dead letters wait for people.
RETENTION_DAYS = 3.0
DLQ_RETENTION_DAYS = 14.0
# Shown for existing topics, so a too small limit or a short retention is noticed.
WATCHED_CONFIGS = ("max.message.bytes", "retention.ms")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


class TopicAction(StrEnum):
    CREATED = "created"
    EXISTS = "exists"
    GROWN = "partitions increased"


@dataclass(frozen=True)
class TopicResult:
    name: str
    action: TopicAction
    partitions: int
    notes: tuple[str, ...] = ()


def min_insync_replicas(replication_factor: int) -> int | None:
    """With acks=all, one replica may be lost without stopping writes (none below RF 3: one
    more replica than 1 would stop writes as soon as a broker goes)."""
    return replication_factor - 1 if replication_factor >= 3 else None


def default_replication(brokers: int) -> tuple[int, int | None]:
    """Replication factor and min.insync.replicas for a cluster of `brokers` brokers."""
    replication_factor = max(1, min(3, brokers))
    return replication_factor, min_insync_replicas(replication_factor)


def cluster_brokers(admin_config: Mapping[str, Any], timeout_s: float = 10) -> int:
    """How many brokers the cluster has registered (the default replication factor's bound)."""
    return len(AdminClient(dict(admin_config)).list_topics(timeout=timeout_s).brokers)


def worker_topics(
    settings: Settings,
    partitions: int,
    replication_factor: int,
    retention_days: float,
    dlq_retention_days: float,
) -> list[TopicSpec]:
    """Inbound, processed and DLQ, sized for the worker's message limit; the DLQ kept longer,
    since people read it days later."""

    def config(days: float) -> dict[str, str]:
        settings_config = {
            "max.message.bytes": str(settings.kafka_max_message_bytes),
            "retention.ms": str(int(days * DAY_MS)),
        }
        if min_isr := min_insync_replicas(replication_factor):
            settings_config["min.insync.replicas"] = str(min_isr)
        return settings_config

    return [
        TopicSpec(
            settings.kafka_inbound_topic, partitions, replication_factor, config(retention_days)
        ),
        TopicSpec(
            settings.kafka_processed_topic, partitions, replication_factor, config(retention_days)
        ),
        TopicSpec(
            settings.kafka_dlq_topic, partitions, replication_factor, config(dlq_retention_days)
        ),
    ]


def ensure_topics(
    admin_config: Mapping[str, Any], specs: Sequence[TopicSpec], timeout_s: float = 30
) -> list[TopicResult]:
    """Create missing topics, grow ones with fewer partitions than asked, report the others;
    return once every topic has a leader on each partition."""
    admin = AdminClient(dict(admin_config))
    existing = admin.list_topics(timeout=10).topics
    raced = create_missing(admin, [s for s in specs if s.name not in existing], timeout_s)
    if raced:  # created by someone else meanwhile: reported (and grown) like any existing one
        fresh = admin.list_topics(timeout=10).topics
        existing = {**existing, **{n: fresh[n] for n in raced if n in fresh}}
    grow = [
        s for s in specs if s.name in existing and len(existing[s.name].partitions) < s.partitions
    ]
    if grow:
        wanted = [NewPartitions(s.name, s.partitions) for s in grow]
        for future in admin.create_partitions(wanted, operation_timeout=timeout_s).values():
            future.result()
    configs = _configs(admin, [s.name for s in specs if s.name in existing], timeout_s)
    _wait_for_leaders(admin, [s.name for s in specs], timeout_s)
    return [_result(s, existing, configs.get(s.name, {}), s in grow) for s in specs]


def create_missing(
    admin: AdminClient, missing: Sequence[TopicSpec], timeout_s: float = 30
) -> set[str]:
    """Create the topics; return those that already existed by then (a concurrent `topics
    create`, or auto-creation), which is no failure."""
    if not missing:
        return set()
    new = [
        NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config)) for s in missing
    ]
    raced: set[str] = set()
    for name, future in admin.create_topics(new, operation_timeout=timeout_s).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            raced.add(name)
    return raced


def _result(
    spec: TopicSpec, existing: Mapping[str, Any], config: Mapping[str, str], grown: bool
) -> TopicResult:
    if spec.name not in existing:
        return TopicResult(spec.name, TopicAction.CREATED, spec.partitions)
    have = len(existing[spec.name].partitions)
    notes = [f"{k}={config[k]}" for k in WATCHED_CONFIGS if k in config]
    wanted_bytes = spec.config.get("max.message.bytes")
    if wanted_bytes and int(config.get("max.message.bytes", wanted_bytes)) < int(wanted_bytes):
        notes.append(f"max.message.bytes below the worker's {wanted_bytes}: raise it")
    if grown:
        return TopicResult(spec.name, TopicAction.GROWN, spec.partitions, tuple(notes))
    if have > spec.partitions:
        notes.append(f"{have} partitions, more than asked (partitions never shrink)")
    return TopicResult(spec.name, TopicAction.EXISTS, have, tuple(notes))


def _configs(admin: AdminClient, names: list[str], timeout_s: float) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
    found: dict[str, dict[str, str]] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout_s).items():
        entries = future.result()
        found[resource.name] = {k: str(entries[k].value) for k in WATCHED_CONFIGS if k in entries}
    return found


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=5).topics
        if all(
            n in topics
            and topics[n].partitions
            and all(p.leader >= 0 for p in topics[n].partitions.values())
            for n in names
        ):
            return
        time.sleep(0.2)
    raise TimeoutError(f"topics {names} have no leader after {timeout_s}s")
