"""Broker failures under load, on a 3-broker cluster (RF 3, min.insync.replicas 2, SASL_SSL).

Each scenario runs the real worker while traffic flows, breaks brokers (kill -9 of a partition
leader or of the KRaft controller, a rolling SIGTERM restart, two brokers down), and accounts
for every event as `harness/scenarios.py` does. The worker must ride through: never restarted,
nothing lost, nothing repeated on the processed topic (acks=all with an idempotent producer).
The stall of each failover is the longest time without any processed record after the fault.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from devtools import devstack
from devtools.devstack import Service
from devtools.handler_server import HandlerServer, Reply
from devtools.kafka import Record, produce, read_topic
from devtools.kafka_cluster import Cluster, start_cluster
from devtools.worker import WorkerProcess
from harness.accounting import Report, account
from harness.scenarios import Scale
from harness.traffic import SteadyProducer, Traffic, build
from wa_worker.models.headers import EVENT_KEY

# Traffic keeps flowing this long after the last fault is repaired, so the stall ends in it.
TAIL_S = 5.0
WARMUP = 20  # records sent before the stream, to see the worker write


@dataclass
class ClusterLab:
    """A cluster and a Redis the scenarios may use (the cluster's nodes they stop and start)."""

    cluster: Cluster
    redis_url: str
    redis: Service | None = None  # ours to stop, when we started it

    @classmethod
    def start(cls, base: Path, security: str = "sasl_ssl") -> ClusterLab:
        cluster = start_cluster(base / "kafka-cluster", brokers=3, security=security)
        redis_server = Service("redis", "redis-server", base)
        port = devstack.start_redis(0, service=redis_server)
        return cls(cluster, f"redis://127.0.0.1:{port}/0", redis_server)

    def close(self) -> None:
        self.cluster.stop()
        if self.redis is not None:
            self.redis.stop()


class ClusterRun:
    """One scenario's topics (RF 3), Redis keys, handler and worker, on the lab's cluster."""

    def __init__(self, lab: ClusterLab, name: str, workdir: Path) -> None:
        tag = f"b{uuid.uuid4().hex[:8]}"
        self.lab, self.cluster, self.name = lab, lab.cluster, name
        self.inbound, self.processed, self.dlq = f"{tag}.in", f"{tag}.processed", f"{tag}.dlq"
        self.cluster.create_topics([self.inbound, self.processed, self.dlq], partitions=3)
        self.config = self.cluster.client_config()
        self.handler = HandlerServer(lambda _e, _a: Reply(200, {"ok": True})).__enter__()
        env = {
            **self.cluster.env(),
            "REDIS_URL": lab.redis_url,
            "KAFKA_INBOUND_TOPIC": self.inbound,
            "KAFKA_PROCESSED_TOPIC": self.processed,
            "KAFKA_DLQ_TOPIC": self.dlq,
            "REDIS_KEY_PREFIX": f"{tag}:",
            "KAFKA_GROUP_ID": f"{tag}-group",
            "HANDLER_URL": self.handler.url,
            # Generous: 2 busy cores restarting JVMs delay even an instant answer past 1 s, and
            # a late answer is retried (a repeat that says nothing about brokers).
            "HANDLER_TIMEOUT_MS": "5000",
            "RETRY_DELAY_MS": "200",
            "MAX_RETRIES": "3",
            "HEALTH_PORT": "0",
            "LOG_LEVEL": "WARNING",
            "DRAIN_TIMEOUT_S": "10",
        }
        self.worker = WorkerProcess(env, workdir / name / "recovery", workdir / f"{name}.log")
        self.faults: list[tuple[str, float]] = []  # (what, wall-clock time of the fault)
        self.repairs: list[float] = []  # when a node was back after each fault

    def send(self, records: list[tuple[bytes, bytes]], rate: float) -> SteadyProducer:
        return SteadyProducer(
            self.cluster.brokers, self.inbound, records, rate, self.config
        ).start()

    def fault(self, what: str, node_id: int, sig: int = signal.SIGKILL) -> None:
        self.faults.append((f"{what} (node {node_id})", time.time()))
        self.cluster.kill(node_id, sig)

    def repair(self, node_id: int) -> None:
        """Start the node again; the first repair after a fault is when output may resume."""
        self.cluster.start_node(node_id)
        if len(self.repairs) < len(self.faults):
            self.repairs.append(time.time())

    def wait_until_output(self, records: int, timeout_s: float = 60) -> None:
        """Until the worker has written `records` processed records (the sink is producing)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = read_topic(
                self.cluster.brokers, self.processed, timeout_s=10, config=self.config
            )
            if len(done) >= records:
                return
            time.sleep(0.3)
        raise RuntimeError(f"no output from the worker:\n{self.worker.log()[-3000:]}")

    def settle(self, traffic: Traffic, timeout_s: float = 240) -> tuple[list[Record], list[Record]]:
        deadline = time.monotonic() + timeout_s
        while True:
            processed = read_topic(
                self.cluster.brokers, self.processed, timeout_s=30, config=self.config
            )
            dlq = read_topic(self.cluster.brokers, self.dlq, timeout_s=30, config=self.config)
            seen = {r.header(EVENT_KEY) for r in processed + dlq}
            values = {r.value for r in dlq}
            done = traffic.unique_events <= seen and all(p in values for p in traffic.poison)
            if done or time.monotonic() > deadline:
                return processed, dlq
            if not self.worker.running():
                raise RuntimeError(f"worker died:\n{self.worker.log()[-3000:]}")
            time.sleep(1)

    def report(
        self,
        traffic: Traffic,
        processed: list[Record],
        dlq: list[Record],
        input_ended: float | None = None,
    ) -> Report:
        if not self.worker.running():
            raise RuntimeError(
                f"a broker failover stopped the worker:\n{self.worker.log()[-3000:]}"
            )
        stalls = stall_per_fault(processed, self.faults, input_ended)
        resumed = resumed_after(processed, self.repairs)
        note = "; ".join(
            _told(what, s, r)
            for (what, s), r in zip(stalls, resumed + [None] * len(stalls), strict=False)
        )
        report = account(
            self.name,
            len(traffic.records),
            traffic.unique_events,
            traffic.poison,
            processed,
            dlq,
            list(self.handler.calls),
            self.worker.starts - 1,
            note,
        )
        report.stalls_s = tuple(s for _, s in stalls if s is not None)
        return report

    def close(self) -> None:
        self.worker.stop(signal.SIGTERM)
        self.handler.__exit__(None, None, None)
        for node_id in self.cluster.nodes:  # the next scenario starts on a whole cluster
            self.cluster.start_node(node_id)


def _told(what: str, stall_s: float | None, resumed_s: float | None) -> str:
    if stall_s is None:
        return f"{what}: no stall to measure (the input had ended and was all written before it)"
    after = f" (output {resumed_s:.1f}s after the node was back)" if resumed_s else ""
    return f"{what}: stall {stall_s:.1f}s{after}"


def stall_per_fault(
    processed: list[Record],
    faults: list[tuple[str, float]],
    input_ended: float | None = None,
    window_s: float = 90,
) -> list[tuple[str, float | None]]:
    """For each fault, the longest gap between processed records (by the sink's create time)
    from the fault until the next fault or `window_s` later. None for a fault after the input
    ended (`input_ended`, wall clock) with no output at all after it: everything had been
    written before it, so nothing could stall (a gap to the end of the window would read as a
    90 s stall; output after the window still counts as a stall). Pure."""
    stamps = sorted(r.timestamp_ms / 1000 for r in processed)
    out: list[tuple[str, float | None]] = []
    for i, (what, at) in enumerate(faults):
        end = faults[i + 1][1] if i + 1 < len(faults) else at + window_s
        inside = [t for t in stamps if at <= t <= end]
        if input_ended is not None and at >= input_ended and not (stamps and stamps[-1] >= at):
            out.append((what, None))
            continue
        before = [t for t in stamps if t < at]
        points = ([before[-1]] if before else [at]) + inside
        gaps = [b - a for a, b in pairwise(points)]
        out.append((what, max(gaps, default=end - at)))
    return out


def resumed_after(processed: list[Record], repairs: list[float]) -> list[float | None]:
    """Seconds from each repair to the first processed record after it (None: none after)."""
    stamps = sorted(r.timestamp_ms / 1000 for r in processed)
    return [next((t - at for t in stamps if t >= at), None) for at in repairs]


def _traffic(scale: Scale, seconds: float, seed: int) -> Traffic:
    return build(max(scale.webhooks, int(scale.rate * seconds)), seed=seed)


def _busiest(cluster: Cluster, topics: list[str]) -> int:
    """The node leading most partitions of `topics`."""
    counts: dict[int, int] = {}
    for topic in topics:
        for leader in cluster.leaders(topic).values():
            counts[leader] = counts.get(leader, 0) + 1
    return max(counts, key=lambda n: counts[n])


def _scenario(
    name: str,
    seed: int,
    faults: Callable[[ClusterRun, Scale], None],
    seconds: Callable[[Scale], float],
) -> Callable[[ClusterLab, Path, Scale], Report]:
    def run_it(lab: ClusterLab, workdir: Path, scale: Scale) -> Report:
        run = ClusterRun(lab, name, workdir)
        traffic = _traffic(scale, seconds(scale), seed)
        try:
            # The worker up and writing first (its start-up can take longer than the traffic
            # on a busy machine): then the stream, and the fault in its middle.
            run.worker.start()
            produce(run.cluster.brokers, run.inbound, traffic.records[:WARMUP], run.config)
            run.wait_until_output(1, timeout_s=120)
            producer = run.send(traffic.records[WARMUP:], scale.rate)
            time.sleep(2)
            faults(run, scale)
            producer.join()
            processed, dlq = run.settle(traffic)
            return run.report(traffic, processed, dlq, producer.ended_at)
        finally:
            run.close()

    return run_it


def _inbound_leader(run: ClusterRun, scale: Scale) -> None:
    node = run.cluster.leader_of(run.inbound, 0)
    run.fault("kill -9 inbound leader", node)
    time.sleep(scale.outage_s)
    run.repair(node)


def _outputs_leader(run: ClusterRun, scale: Scale) -> None:
    node = _busiest(run.cluster, [run.processed, run.dlq])
    run.fault("kill -9 processed/DLQ leader", node)
    time.sleep(scale.outage_s)
    run.repair(node)


def _controller(run: ClusterRun, scale: Scale) -> None:
    node = run.cluster.active_controller()
    run.fault("kill -9 active controller", node)
    time.sleep(scale.outage_s)
    run.repair(node)


def _rolling(run: ClusterRun, _scale: Scale) -> None:
    for node in sorted(run.cluster.nodes):
        run.fault("SIGTERM", node, signal.SIGTERM)
        run.repair(node)
        # Like a careful operator: the next one only once every partition is in sync again.
        run.cluster.wait_for_leaders([run.inbound, run.processed, run.dlq])
        _wait_in_sync(run.cluster, [run.inbound, run.processed, run.dlq])


def _two_down(run: ClusterRun, scale: Scale) -> None:
    """Below min.insync.replicas: the sink must wait (no drop, no dead letter), then resume."""
    first, second = [n for n in sorted(run.cluster.nodes) if n != run.cluster.active_controller()][
        :2
    ]
    run.fault("two brokers down (kill -9)", first)
    run.cluster.kill(second)
    time.sleep(scale.outage_s)
    run.cluster.start_node(first, wait=False)  # both start together (JVMs start slowly)
    run.repair(second)  # two of three again: the quorum and min.insync.replicas are met
    run.cluster.start_node(first)


def _wait_in_sync(cluster: Cluster, topics: list[str], timeout_s: float = 60) -> None:
    admin = cluster._admin()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            meta = admin.list_topics(timeout=5).topics
            if all(
                len(p.isrs) == len(p.replicas) for t in topics for p in meta[t].partitions.values()
            ):
                return
        time.sleep(0.3)


def _outage_span(scale: Scale) -> float:
    return scale.outage_s + 2 + TAIL_S


BROKER_SCENARIOS: dict[str, Callable[[ClusterLab, Path, Scale], Report]] = {
    "broker-inbound-leader": _scenario("broker-inbound-leader", 41, _inbound_leader, _outage_span),
    "broker-outputs-leader": _scenario("broker-outputs-leader", 43, _outputs_leader, _outage_span),
    "broker-controller": _scenario("broker-controller", 47, _controller, _outage_span),
    # Three restarts, each waited out until every replica is in sync again: 45 s of traffic
    # ended before the third on a busy 2-core machine.
    "broker-rolling": _scenario("broker-rolling", 53, _rolling, lambda s: 90.0),
    "broker-two-down": _scenario("broker-two-down", 59, _two_down, _outage_span),
}
