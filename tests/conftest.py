"""Fixtures: a real Kafka broker and Redis server for the whole session, and per-test names.

The stack is the project's own (`devtools.devstack`), started in `.stack/test-<worker>` on free
ports and stopped at the end. To use services you already run, set WA_TEST_KAFKA_BROKERS and
WA_TEST_REDIS_URL (and WA_TEST_REDIS_CLUSTER_URL for a Redis Cluster). The other Redis
topologies (Sentinel, TLS with an ACL user) are always the project's own
(`devtools.redis_topologies`), started once per session by the first test that needs them.
The 3-broker SASL_SSL Kafka cluster (`kafka_cluster`) is started in `.stack/test-*/kafka-cluster`,
or reused from the folder WA_TEST_KAFKA_CLUSTER_DIR names (e.g. `.stack/kafka-cluster` after
`scripts/devstack up --brokers 3 --security sasl_ssl`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from devtools.kafka_cluster import Cluster
from devtools.worker import ROOT, WorkerProcess

if TYPE_CHECKING:
    from devtools.redis_topologies import Topology
    from wa_worker.settings import Settings


@dataclass(frozen=True)
class Stack:
    brokers: str
    redis_url: str
    owned: bool


@dataclass(frozen=True)
class Topics:
    inbound: str
    processed: str
    dlq: str

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_INBOUND_TOPIC": self.inbound,
            "KAFKA_PROCESSED_TOPIC": self.processed,
            "KAFKA_DLQ_TOPIC": self.dlq,
        }


# The session's own services; each pytest-xdist worker (`make test` runs two) has its own.
TEST_STACK = ROOT / ".stack" / ("test-" + os.environ.get("PYTEST_XDIST_WORKER", "main"))

# Run last: what they need is built in the background meanwhile (promtool by scripts/bootstrap).
_LAST = ("tests/test_alert_rules.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.startswith(_LAST))


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    brokers = os.environ.get("WA_TEST_KAFKA_BROKERS")
    redis_url = os.environ.get("WA_TEST_REDIS_URL")
    if brokers and redis_url:
        yield Stack(brokers, redis_url, owned=False)
        return
    from devtools import devstack

    kafka, redis_server = devstack.services(TEST_STACK)
    redis_port = devstack.start_redis(0, service=redis_server)
    kafka_port = devstack.start_kafka(0, service=kafka)
    yield Stack(f"127.0.0.1:{kafka_port}", f"redis://127.0.0.1:{redis_port}/0", owned=True)
    kafka.stop()
    redis_server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """Any node of a Redis Cluster (three primaries, one replica each)."""
    url = os.environ.get("WA_TEST_REDIS_CLUSTER_URL")
    if url:
        yield url
        return
    from devtools.redis_topologies import start_redis_cluster

    cluster = start_redis_cluster(TEST_STACK)
    yield cluster.env["REDIS_URL"]
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[Topology]:
    """A primary, a replica and three sentinels (tests may fail the primary over)."""
    from devtools.redis_topologies import start_redis_sentinel

    topology = start_redis_sentinel(TEST_STACK)
    yield topology
    topology.stop()


@pytest.fixture(scope="session")
def redis_sentinel_env(redis_sentinel: Topology) -> dict[str, str]:
    return dict(redis_sentinel.env)


@pytest.fixture(scope="session")
def redis_tls_env() -> Iterator[dict[str, str]]:
    """A TLS-only Redis requiring a client certificate, reached as an ACL user."""
    from devtools.redis_topologies import start_redis_tls

    topology = start_redis_tls(TEST_STACK)
    yield dict(topology.env)
    topology.stop()


@dataclass(frozen=True)
class RedisTarget:
    """One Redis topology, as the REDIS_* settings a worker would get."""

    name: str
    env: dict[str, str]

    def settings(self, **overrides: Any) -> Settings:
        from wa_worker.settings import load_settings

        return load_settings(**{k.lower(): v for k, v in self.env.items()}, **overrides)


# The dedupe contract runs on each (tests/test_dedupe.py).
DEDUPE_TOPOLOGIES = ("standalone", "cluster", "sentinel", "tls")


@pytest.fixture(params=DEDUPE_TOPOLOGIES)
def dedupe_redis(request: pytest.FixtureRequest, stack: Stack) -> RedisTarget:
    name: str = request.param
    if name == "standalone":
        return RedisTarget(name, {"REDIS_URL": stack.redis_url})
    if name == "cluster":
        url = request.getfixturevalue("redis_cluster_url")
        return RedisTarget(name, {"REDIS_URL": url, "REDIS_MODE": "cluster"})
    return RedisTarget(name, request.getfixturevalue(f"redis_{name}_env"))


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[Cluster]:
    """Three brokers, SASL_SSL (SCRAM-SHA-512). Tests that stop a node start it again."""
    from devtools.kafka_cluster import start_cluster

    given = os.environ.get("WA_TEST_KAFKA_CLUSTER_DIR")
    base = Path(given) if given else TEST_STACK / "kafka-cluster"
    cluster = start_cluster(base, brokers=3, security="sasl_ssl")
    yield cluster
    if not given:
        cluster.stop()


@pytest.fixture
def topic_partitions() -> int:
    """Partitions of each test topic; a test module overrides this fixture to change it."""
    return 3


@pytest.fixture
def topics(stack: Stack, topic_partitions: int) -> Topics:
    from devtools.devstack import create_topics

    run = uuid.uuid4().hex[:10]
    names = Topics(f"t{run}.inbound", f"t{run}.processed", f"t{run}.dlq")
    create_topics(
        stack.brokers, [names.inbound, names.processed, names.dlq], partitions=topic_partitions
    )
    return names


@pytest.fixture
def redis_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def redis_client(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url)
    yield client
    client.close()


@pytest.fixture
def worker_env(stack: Stack, topics: Topics, redis_prefix: str) -> dict[str, str]:
    """Settings for a worker isolated to this test's topics and Redis keys."""
    return {
        "KAFKA_BROKERS": stack.brokers,
        "REDIS_URL": stack.redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "KAFKA_GROUP_ID": f"{redis_prefix}group",
        "OFFSETS_REPORT_INTERVAL_S": "1",
        "HEALTH_PORT": "0",
        "LOG_LEVEL": "INFO",
        "RETRY_DELAY_MS": "200",
        "MAX_RETRIES": "3",
        "HANDLER_TIMEOUT_MS": "5000",
        **topics.env(),
    }


@pytest.fixture
def start_worker(
    tmp_path: Path, worker_env: dict[str, str]
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(workers: int = 1, **env: str) -> WorkerProcess:
        worker = WorkerProcess(
            {**worker_env, **env},
            tmp_path / "recovery",
            tmp_path / f"worker-{len(started)}.log",
            workers,
        )
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.stop()
