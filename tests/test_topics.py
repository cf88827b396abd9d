"""`wa-worker topics create` against the real broker: created, then reported, then grown."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

from tests.conftest import Stack
from tests.support.cli import run_cli
from wa_worker.cli.topics import TopicSpec, create_missing


def topics_create(env: dict[str, str], *args: str) -> str:
    return run_cli(env, "topics", "create", *args).stdout


def test_topics_create_is_idempotent_and_grows_partitions(stack: Stack) -> None:
    run = uuid.uuid4().hex[:10]
    names = {"inbound": f"c{run}.in", "processed": f"c{run}.out", "dlq": f"c{run}.dlq"}
    env = {
        "KAFKA_BROKERS": stack.brokers,
        "KAFKA_INBOUND_TOPIC": names["inbound"],
        "KAFKA_PROCESSED_TOPIC": names["processed"],
        "KAFKA_DLQ_TOPIC": names["dlq"],
        "KAFKA_MAX_MESSAGE_BYTES": "3000000",
    }
    first = topics_create(env, "--partitions", "2", "--dlq-retention-days", "10")
    assert first.count("created") == 3
    admin = AdminClient({"bootstrap.servers": stack.brokers})
    assert _partitions(admin, names.values()) == {n: 2 for n in names.values()}
    configs = _configs(admin, names.values())
    assert configs[names["dlq"]]["retention.ms"] == str(10 * 86_400_000)
    assert configs[names["inbound"]]["retention.ms"] == str(3 * 86_400_000)
    assert {c["max.message.bytes"] for c in configs.values()} == {"3000000"}

    again = topics_create(env, "--partitions", "2")
    assert again.count("exists") == 3 and "created" not in again
    assert "retention.ms=864000000" in again  # the DLQ's, as it is on the broker

    grown = topics_create(env, "--partitions", "4")
    assert grown.count("partitions increased") == 3
    assert _partitions(admin, names.values()) == {n: 4 for n in names.values()}

    fewer = topics_create(env, "--partitions", "1")
    assert fewer.count("more than asked") == 3
    assert _partitions(admin, names.values()) == {n: 4 for n in names.values()}


def _partitions(admin: AdminClient, names: Iterable[str]) -> dict[str, int]:
    topics = admin.list_topics(timeout=10).topics
    return {n: len(topics[n].partitions) for n in names}


def _configs(admin: AdminClient, names: Iterable[str]) -> dict[str, dict[str, str]]:
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
    return {
        r.name: {k: str(v.value) for k, v in f.result().items()}
        for r, f in admin.describe_configs(resources).items()
    }


def test_a_topic_created_meanwhile_counts_as_existing(stack: Stack) -> None:
    name = f"c{uuid.uuid4().hex[:10]}.race"
    admin = AdminClient({"bootstrap.servers": stack.brokers})
    spec = TopicSpec(name, 2)
    assert create_missing(admin, [spec]) == set()
    # What a concurrent `topics create` sees: listed as missing, then already there.
    assert create_missing(admin, [spec]) == {name}
    assert _partitions(admin, [name]) == {name: 2}
