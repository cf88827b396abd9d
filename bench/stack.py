"""The bench's Kafka and Redis (the project's devstack, in `.stack/bench`; a Redis Cluster and
a TLS Redis too when rows need them), fresh topics per run, loading records, and the Go
handler peer."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.models import RedisKind
from bench.workload import Record
from devtools import devstack, redis_topologies
from wa_worker.core.kafka_produce import produce_waiting

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".stack" / "bench"
PARTITIONS = 3
CLUSTER_DIR = BENCH_DIR / "kafka-cluster"


@dataclass(frozen=True)
class Stack:
    brokers: str
    redis_url: str  # the standalone Redis, which every contestant but D's other rows uses
    client: Mapping[str, str] = field(default_factory=dict)  # librdkafka options (SASL_SSL)
    env: Mapping[str, str] = field(default_factory=dict)  # the worker's KAFKA_* settings
    replicas: int = 1
    other_redis: dict[RedisKind, dict[str, str]] = field(default_factory=dict)  # REDIS_* env

    def kafka(self, **options: str | int | float | bool) -> dict[str, str | int | float | bool]:
        """A client config for this stack's Kafka."""
        return {**self.client, "bootstrap.servers": self.brokers, **options}

    def redis_env(self, kind: RedisKind) -> dict[str, str]:
        """The worker's REDIS_* settings for a row on that Redis."""
        if kind is RedisKind.STANDALONE:
            return {"REDIS_URL": self.redis_url}
        return self.other_redis[kind]


@dataclass(frozen=True)
class RunTopics:
    """One contestant run's topics and Redis key prefix, none shared with any other run."""

    tag: str
    inbound: str
    processed: str
    dlq: str

    @property
    def redis_prefix(self) -> str:
        return f"bench{self.tag}:"


def start_stack(redis_kinds: Collection[RedisKind] = ()) -> Stack:
    kafka, redis_server = devstack.services(BENCH_DIR)
    redis_port = devstack.start_redis(0, service=redis_server)
    kafka_port = devstack.start_kafka(0, service=kafka)
    other = {}
    if RedisKind.CLUSTER in redis_kinds:
        # Primaries only: replicas would take CPU from the contestant on a small machine.
        other[RedisKind.CLUSTER] = redis_topologies.start_redis_cluster(BENCH_DIR, replicas=0).env
    if RedisKind.TLS in redis_kinds:
        other[RedisKind.TLS] = redis_topologies.start_redis_tls(BENCH_DIR).env
    return Stack(f"127.0.0.1:{kafka_port}", f"redis://127.0.0.1:{redis_port}/0", other_redis=other)


def start_cluster_stack(redis_url: str) -> Stack:
    """The 3-broker SASL_SSL cluster (devtools/kafka_cluster.py) in `.stack/bench`, with the
    single stack's Redis."""
    from devtools.kafka_cluster import start_cluster

    cluster = start_cluster(CLUSTER_DIR, brokers=3, security="sasl_ssl")
    env = cluster.env()
    client = {k: v for k, v in cluster.client_config().items() if k != "bootstrap.servers"}
    return Stack(cluster.brokers, redis_url, client, env, replicas=3)


def stop_stack() -> None:
    from devtools.kafka_cluster import open_cluster

    for service in [*devstack.services(BENCH_DIR), *redis_topologies.recorded_nodes(BENCH_DIR)]:
        service.stop()
    if cluster := open_cluster(CLUSTER_DIR):
        cluster.stop()


def create_topics(stack: Stack) -> RunTopics:
    tag = uuid.uuid4().hex[:8]
    topics = RunTopics(tag, f"b{tag}.inbound", f"b{tag}.processed", f"b{tag}.dlq")
    size = {"max.message.bytes": str(devstack.MAX_MESSAGE_BYTES)}
    if stack.replicas >= 3:
        size["min.insync.replicas"] = str(stack.replicas - 1)  # as `topics create` makes them
    # Output timestamps are the broker's append times: the throughput clock is the broker's.
    appended = {**size, "message.timestamp.type": "LogAppendTime"}
    admin = _admin(stack)
    rf = stack.replicas
    new = [
        NewTopic(topics.inbound, PARTITIONS, rf, config=size),
        NewTopic(topics.processed, PARTITIONS, rf, config=appended),
        NewTopic(topics.dlq, PARTITIONS, rf, config=appended),
    ]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = admin.list_topics(timeout=5).topics
        if all(
            len(found[t.topic].partitions) == PARTITIONS
            and all(p.leader >= 0 for p in found[t.topic].partitions.values())
            for t in new
            if t.topic in found
        ) and all(t.topic in found for t in new):
            return topics
        time.sleep(0.1)
    raise RuntimeError(f"topics of run {tag} have no leaders after 30s")


def _admin(stack: Stack) -> AdminClient:
    return AdminClient(stack.kafka(log_level=0))


def delete_topics(stack: Stack, topics: RunTopics) -> None:
    """Keeps the broker small over a long bench (a soak writes a gigabyte)."""
    admin = _admin(stack)
    # Contestant E's own topics (repartition, changelog) carry the run's tag in their names.
    own = [t for t in admin.list_topics(timeout=10).topics if f"{topics.tag}-quix" in t]
    futures = admin.delete_topics([topics.inbound, topics.processed, topics.dlq, *own])
    for future in futures.values():
        with contextlib.suppress(Exception):
            future.result(30)


def bench_producer(stack: Stack, linger_ms: int = 5) -> Producer:
    return Producer(
        stack.kafka(
            **{
                "enable.idempotence": True,
                "linger.ms": linger_ms,
                "message.max.bytes": devstack.MAX_MESSAGE_BYTES,
                "log_level": 0,
            }
        )
    )


def load(stack: Stack, topic: str, records: Iterable[Record]) -> int:
    producer = bench_producer(stack, linger_ms=20)
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    sent = 0
    for record in records:
        send(producer, topic, record, on_delivery)
        sent += 1
    if producer.flush(60) or failures:
        raise RuntimeError(f"loading {topic} failed: {failures[:3]}")
    return sent


def send(
    producer: Producer,
    topic: str,
    record: Record,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
) -> None:
    produce_waiting(producer, topic, record.value, record.key, on_delivery=on_delivery)


@contextlib.contextmanager
def handler_peer(delay_ms: int) -> Iterator[str]:
    """bench/handler_peer.go, answering after `delay_ms`: a Python server would be the
    bottleneck. Yields its URL."""
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "handler_peer"
        subprocess.run(
            ["go", "build", "-o", str(binary), "handler_peer.go"],
            cwd=Path(__file__).parent,
            check=True,
        )
        proc = subprocess.Popen(
            [str(binary), "-delay", f"{delay_ms}ms"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            yield proc.stdout.readline().strip()
        finally:
            proc.terminate()
            proc.wait(10)
