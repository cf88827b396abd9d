"""The stack the tests run on is a real Kafka broker and a real Redis server."""

from __future__ import annotations

import uuid

import redis
from confluent_kafka.admin import AdminClient

from devtools.kafka import produce, read_topic
from tests.conftest import Stack, Topics


def test_kafka_round_trip_through_a_real_broker(stack: Stack, topics: Topics) -> None:
    metadata = AdminClient({"bootstrap.servers": stack.brokers}).list_topics(timeout=10)
    assert metadata.brokers, "no broker answered"
    assert len(metadata.topics[topics.inbound].partitions) == 3
    payload = uuid.uuid4().bytes * 100_000  # 1.6 MB: the broker accepts Meta-sized payloads
    produce(stack.brokers, topics.inbound, [(b"k1", b"first"), (b"k2", payload)])
    records = read_topic(stack.brokers, topics.inbound)
    assert sorted(r.value for r in records) == sorted([b"first", payload])
    assert all(r.offset >= 0 for r in records)


def test_redis_is_a_real_server(redis_client: redis.Redis, redis_prefix: str) -> None:
    info = redis_client.info("server")
    assert info["redis_version"]
    key = f"{redis_prefix}probe"
    assert redis_client.set(key, "v", nx=True, px=10_000)
    assert not redis_client.set(key, "other", nx=True, px=10_000)
    assert redis_client.get(key) == b"v"
    assert 0 < redis_client.pttl(key) <= 10_000


def test_kraft_cluster_ids_never_look_like_an_option():
    """The storage tool reads `-t -abc…` as a missing value: one formatting in 64 failed."""
    from devtools.devstack import new_cluster_id

    ids = [new_cluster_id() for _ in range(2000)]
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids) and len(set(ids)) == len(ids)
