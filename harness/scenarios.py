"""Fault scenarios. Each runs the real worker (`python -m bytewax.run dataflow -r …`) against
the harness's own Kafka broker, Redis server and HTTP handler, injects its fault while traffic
flows, waits until the traffic is accounted for, and returns the accounting."""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from devtools import devstack
from devtools.devstack import Service, create_topics
from devtools.handler_server import HandlerServer, Reply
from devtools.kafka import produce, read_topic
from devtools.redis_topologies import (
    Topology,
    recorded_nodes,
    start_redis_cluster,
    start_redis_sentinel,
)
from devtools.worker import WorkerProcess
from harness.accounting import Report, account, longest_gap
from harness.failovers import (
    Failover,
    cluster_kill_primary,
    sentinel_failover,
    sentinel_kill_primary,
)
from harness.fuzz import fuzz_inputs
from harness.tcp_proxy import TcpProxy
from harness.traffic import SteadyProducer, Traffic, build
from wa_worker.core.dedupe import DedupeAdmin, MarkerState, dedupe_keys
from wa_worker.core.redis_client import redis_client
from wa_worker.models.headers import ERROR_CLASS, EVENT_KEY
from wa_worker.models.records import DeadLetter
from wa_worker.operators.parse import parse_record
from wa_worker.settings import load_settings

HANDLER_TIMEOUT_S = 1.0


@dataclass
class Scale:
    webhooks: int  # per scenario
    rate: float  # webhooks per second
    outage_s: float
    fuzz: int
    redis_fault_s: float = 5.0  # delays and partitions between worker and Redis (> 2 s timeout)


SHORT = Scale(webhooks=300, rate=60, outage_s=10, fuzz=10_000)


@dataclass
class Lab:
    """The harness's own services, which scenarios may stop and start."""

    base: Path
    kafka: Service
    redis: Service
    kafka_port: int
    redis_port: int

    @classmethod
    def start(cls, base: Path) -> Lab:
        kafka, redis_server = devstack.services(base)
        redis_port = devstack.start_redis(0, service=redis_server)
        kafka_port = devstack.start_kafka(0, service=kafka)
        return cls(base, kafka, redis_server, kafka_port, redis_port)

    @property
    def brokers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def stop_redis(self, keep_data: bool) -> None:
        client = redis.Redis.from_url(self.redis_url)
        with contextlib.suppress(redis.ConnectionError):  # it hangs up as it goes
            client.shutdown(save=keep_data, nosave=not keep_data)
        self.redis.stop()
        if not keep_data:
            (self.redis.dir / "dump.rdb").unlink(missing_ok=True)

    def start_redis(self) -> None:
        devstack.start_redis(self.redis_port, service=self.redis)

    def stop_kafka(self) -> None:
        self.kafka.stop()

    def start_kafka(self) -> None:
        devstack.start_kafka(self.kafka_port, service=self.kafka)

    def close(self) -> None:
        self.kafka.stop()
        self.redis.stop()


class Run:
    """One scenario's topics, Redis keys, handler and worker."""

    def __init__(
        self, lab: Lab, name: str, workdir: Path, plan: Callable[..., Reply], **worker_env: str
    ) -> None:
        tag = f"h{uuid.uuid4().hex[:8]}"
        self.lab = lab
        self.name = name
        self.inbound, self.processed, self.dlq = f"{tag}.in", f"{tag}.processed", f"{tag}.dlq"
        create_topics(lab.brokers, [self.inbound, self.processed, self.dlq], partitions=3)
        self.handler = HandlerServer(plan).__enter__()
        env = {
            "KAFKA_BROKERS": lab.brokers,
            "REDIS_URL": lab.redis_url,
            "KAFKA_INBOUND_TOPIC": self.inbound,
            "KAFKA_PROCESSED_TOPIC": self.processed,
            "KAFKA_DLQ_TOPIC": self.dlq,
            "REDIS_KEY_PREFIX": f"{tag}:",
            "HANDLER_URL": self.handler.url,
            "HANDLER_TIMEOUT_MS": str(int(HANDLER_TIMEOUT_S * 1000)),
            "RETRY_DELAY_MS": "200",
            "MAX_RETRIES": "3",
            "CLAIM_LEASE_MS": "3000",
            "HEALTH_PORT": "0",
            "LOG_LEVEL": "WARNING",
            "DRAIN_TIMEOUT_S": "10",
            **worker_env,
        }
        self.env = env
        self.worker = WorkerProcess(env, workdir / name / "recovery", workdir / f"{name}.log")

    def send(self, traffic: Traffic, rate: float) -> SteadyProducer:
        return SteadyProducer(self.lab.brokers, self.inbound, traffic.records, rate).start()

    def settle(self, traffic: Traffic, timeout_s: float = 180) -> tuple[list[Any], list[Any]]:
        """Wait until every event and poison record is on an output topic (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            processed = read_topic(self.lab.brokers, self.processed, timeout_s=30)
            dlq = read_topic(self.lab.brokers, self.dlq, timeout_s=30)
            seen = {r.header(EVENT_KEY) for r in processed + dlq}
            values = {r.value for r in dlq}
            done = traffic.unique_events <= seen and all(p in values for p in traffic.poison)
            if done:
                return processed, dlq
            if time.monotonic() > deadline:
                # Shown with the failed test: why the worker, alive, stopped putting out.
                print(f"{self.name}: not settled; worker log:\n{self.worker.log()[-6000:]}")
                print(self.whereabouts(traffic.unique_events - seen))
                return processed, dlq
            if not self.worker.running():
                raise RuntimeError(f"worker died:\n{self.worker.log()[-3000:]}")
            time.sleep(1)

    def report(
        self, traffic: Traffic, processed: list[Any], dlq: list[Any], note: str = ""
    ) -> Report:
        return account(
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

    def whereabouts(self, missing: set[str], shown: int = 20) -> str:
        """Where events without an outcome got to, told by what the worker left outside it:
        Redis's marker (absent: never claimed; in flight: claimed) and the handler's calls."""
        keys = sorted(missing)[:shown]
        try:
            states = self.marker_states(set(keys))
        except redis.RedisError as exc:
            states = {}
            print(f"marker states unknown: {exc}")
        now = time.monotonic()
        lines = [f"{len(missing)} events without an outcome (first {len(keys)}):"]
        for key in keys:
            calls = [
                f"#{c.attempt} {c.status} {now - c.at:.1f}s ago"
                for c in self.handler.calls_for(key)
            ]
            state = states.get(key)
            lines.append(
                f"  {key}: marker {state.value if state else '?'}; calls {calls or 'none'}"
            )
        return "\n".join(lines)

    def marker_states(self, event_keys: set[str]) -> dict[str, MarkerState]:
        names = {k.lower(): v for k, v in self.env.items() if k.startswith("REDIS_")}
        settings = load_settings(**names)
        client = redis_client(settings)
        try:
            admin = DedupeAdmin(client, dedupe_keys(settings))
            return admin.reset_dead_lettered(sorted(event_keys), dry_run=True)
        finally:
            client.close()

    def markers_absent(self, event_keys: set[str]) -> set[str]:
        """Events (with their outcome on Kafka) that Redis holds no done marker for: markers
        lost and not written again by a repeat. Asked through the worker's own dedupe code,
        with the worker's Redis settings."""
        states = self.marker_states(event_keys)
        return {key for key, state in states.items() if state is MarkerState.ABSENT}

    def wait_for_calls(self, count: int, timeout_s: float = 120) -> None:
        """Until the handler has had `count` calls: the worker is up and busy, not starting."""
        deadline = time.monotonic() + timeout_s
        while len(self.handler.calls) < count:
            if time.monotonic() > deadline or not self.worker.running():
                raise RuntimeError(
                    f"worker not busy after {timeout_s}s:\n{self.worker.log()[-3000:]}"
                )
            time.sleep(0.05)

    def stall_since(self, moment: float) -> float:
        return longest_gap([c.at for c in self.handler.calls if 200 <= c.status < 300], moment)

    def close(self) -> None:
        self.worker.stop(signal.SIGTERM)
        self.handler.__exit__(None, None, None)


def ok(_event: dict[str, Any], _attempt: int) -> Reply:
    return Reply(200, {"ok": True})


def kill_9(lab: Lab, workdir: Path, scale: Scale) -> Report:
    """kill -9 every few seconds at random points; restart on the same recovery directory."""
    rng = random.Random(11)
    run = Run(lab, "kill-9", workdir, ok)
    traffic = build(scale.webhooks)
    try:
        producer = run.send(traffic, scale.rate)
        run.worker.start()
        end = time.monotonic() + scale.webhooks / scale.rate + 4
        while time.monotonic() < end:
            time.sleep(rng.uniform(1.5, 3.5))
            run.worker.kill()
            run.worker.start()
        producer.join()
        processed, dlq = run.settle(traffic)
        return run.report(
            traffic, processed, dlq, "duplicates allowed only for events in flight at a kill"
        )
    finally:
        run.close()


def redis_outage(keep_data: bool) -> Callable[[Lab, Path, Scale], Report]:
    def scenario(lab: Lab, workdir: Path, scale: Scale) -> Report:
        """Redis stopped for a while mid-stream, then restarted with or without its data."""
        name = f"redis-down-{'kept' if keep_data else 'lost'}"
        run = Run(lab, name, workdir, ok)
        traffic = build(scale.webhooks, seed=13)
        try:
            producer = run.send(traffic, scale.rate)
            run.worker.start()
            time.sleep(scale.webhooks / scale.rate / 3)
            lab.stop_redis(keep_data)
            time.sleep(scale.outage_s)
            lab.start_redis()
            producer.join()
            processed, dlq = run.settle(traffic)
            note = (
                ""
                if keep_data
                else "done markers lost: redeliveries of events done before the outage repeat"
            )
            return run.report(traffic, processed, dlq, note)
        finally:
            run.close()

    return scenario


def broker_outage(lab: Lab, workdir: Path, scale: Scale) -> Report:
    """The Kafka broker stopped mid-stream and started again."""
    run = Run(lab, "kafka-down", workdir, ok)
    traffic = build(scale.webhooks, seed=17)
    try:
        producer = run.send(traffic, scale.rate)
        run.worker.start()
        run.wait_for_calls(1)  # mid-stream: a loaded machine may still be starting the worker
        time.sleep(scale.webhooks / scale.rate / 3)
        lab.stop_kafka()
        time.sleep(scale.outage_s)
        lab.start_kafka()
        producer.join()
        processed, dlq = run.settle(traffic)
        return run.report(traffic, processed, dlq)
    finally:
        run.close()


def flaky_handler(lab: Lab, workdir: Path, scale: Scale) -> Report:
    """The handler fails 30 % of calls: 20 % with 503, 10 % by timing out."""
    rng = random.Random(19)

    def plan(_event: dict[str, Any], _attempt: int) -> Reply:
        roll = rng.random()
        if roll < 0.2:
            return Reply(503, {"error": "busy"})
        if roll < 0.3:
            return Reply(599, delay_s=HANDLER_TIMEOUT_S * 1.3)  # the worker gives up first
        return Reply(200, {"ok": True})

    run = Run(lab, "handler-30%-fail", workdir, plan)
    traffic = build(scale.webhooks, seed=23)
    try:
        producer = run.send(traffic, scale.rate)
        run.worker.start()
        producer.join()
        processed, dlq = run.settle(traffic)
        exhausted = sum(1 for r in dlq if r.header(ERROR_CLASS) == "retries_exhausted")
        return run.report(
            traffic, processed, dlq, f"{exhausted} exhausted 4 attempts (0.3^4 ≈ 0.8 % expected)"
        )
    finally:
        run.close()


def handler_down(lab: Lab, workdir: Path, scale: Scale) -> Report:
    """The handler down far longer than the retry budget (~1.4 s); the breaker holds input."""
    outage = {"until": 0.0}

    def plan(_event: dict[str, Any], _attempt: int) -> Reply:
        if time.monotonic() < outage["until"]:
            return Reply(503, {"error": "down"})
        return Reply(200, {"ok": True})

    run = Run(lab, "handler-down", workdir, plan, BREAKER_PROBE_INTERVAL_MS="1000")
    traffic = build(scale.webhooks, seed=29)
    try:
        producer = run.send(traffic, scale.rate)
        run.worker.start()
        time.sleep(scale.webhooks / scale.rate / 3)
        outage["until"] = time.monotonic() + scale.outage_s * 2
        time.sleep(scale.outage_s * 2)
        producer.join()
        processed, dlq = run.settle(traffic)
        dead = sum(1 for r in dlq if r.header(ERROR_CLASS) == "retries_exhausted")
        return run.report(
            traffic,
            processed,
            dlq,
            f"outage {scale.outage_s * 2:.0f}s; {dead} events dead-lettered by it",
        )
    finally:
        run.close()


def sigterm_burst(lab: Lab, workdir: Path, scale: Scale) -> Report:
    """SIGTERM while a burst is being handled; exit 0, restart, nothing lost or repeated."""
    run = Run(lab, "sigterm-burst", workdir, lambda _e, _a: Reply(200, {"ok": True}, delay_s=0.05))
    traffic = build(scale.webhooks, seed=31)
    try:
        produce(lab.brokers, run.inbound, traffic.records)
        run.worker.start()
        while len(run.handler.calls) < len(traffic.unique_events) // 4:
            time.sleep(0.05)
        code = run.worker.stop(signal.SIGTERM)
        if code != 0:
            raise RuntimeError(f"SIGTERM exit code {code}:\n{run.worker.log()[-3000:]}")
        run.worker.start()
        processed, dlq = run.settle(traffic)
        return run.report(traffic, processed, dlq, "drained: exit code 0")
    finally:
        run.close()


def fuzz(lab: Lab, workdir: Path, scale: Scale) -> Report:
    """Bad input at volume: random bytes, deep nesting, huge strings, wrong types, big bodies."""
    run = Run(lab, "fuzz", workdir, ok)
    inputs = fuzz_inputs(scale.fuzz, seed=37)
    traffic = Traffic(records=[(f"f{i}".encode(), v) for i, v in enumerate(inputs)])
    for value in inputs:  # the parser itself is the oracle of what each input must become
        for item in parse_record(value, None):
            if isinstance(item, DeadLetter):
                traffic.poison.append(value)
            else:
                traffic.unique_events.add(item.event_key)
    try:
        produce(lab.brokers, run.inbound, traffic.records)
        run.worker.start()
        processed, dlq = run.settle(traffic, timeout_s=240)
        if not run.worker.running():
            raise RuntimeError("the worker crashed on fuzzed input")
        report = run.report(traffic, processed, dlq)
        event_failures = Counter(
            f"{r.header('wa-error-class')}: {(r.header('wa-error-reason') or '')[:60]}"
            for r in dlq
            if r.header(EVENT_KEY)
        )
        report.note = (
            f"{len(traffic.poison)} inputs expected in the DLQ, "
            f"{report.poison_missing} missing; worker never restarted; "
            f"events dead-lettered: {dict(event_failures)}"
        )
        return report
    finally:
        run.close()


REDIS_DELAY_MS = 200


def redis_network(fault: str) -> Callable[[Lab, Path, Scale], Report]:
    """The network between worker and Redis fails under load, through the harness's proxy:
    `delay` (REDIS_DELAY_MS more per round trip), `blackhole` (nothing flows; longer than
    REDIS_TIMEOUT_MS) or `reset` (connections reset and refused), for the outage, then healed."""

    def scenario(lab: Lab, workdir: Path, scale: Scale) -> Report:
        with TcpProxy("127.0.0.1", lab.redis_port) as proxy:
            run = Run(lab, f"redis-{fault}", workdir, ok, REDIS_URL=proxy.url())
            traffic = build(scale.webhooks, seed=41)
            try:
                producer = run.send(traffic, scale.rate)
                run.worker.start()
                run.wait_for_calls(len(traffic.unique_events) // 4)
                fault_at = time.monotonic()
                if fault == "delay":
                    proxy.delay(REDIS_DELAY_MS)
                else:
                    proxy.partition("blackhole" if fault == "blackhole" else "reset")
                time.sleep(scale.redis_fault_s)
                proxy.heal()
                producer.join()
                processed, dlq = run.settle(traffic)
                what = f"+{REDIS_DELAY_MS} ms per round trip" if fault == "delay" else fault
                report = run.report(
                    traffic,
                    processed,
                    dlq,
                    f"{what} for {scale.redis_fault_s:.0f}s; stall counts from the fault",
                )
                report.stall_s = run.stall_since(fault_at)
                report.markers_missing = len(run.markers_absent(traffic.unique_events))
                return report
            finally:
                run.close()

    return scenario


FAILOVERS: dict[str, tuple[Callable[[Path], Topology], Callable[[Topology], Failover]]] = {
    "sentinel-failover": (start_redis_sentinel, sentinel_failover),
    "sentinel-kill-9": (start_redis_sentinel, sentinel_kill_primary),
    "cluster-kill-9": (lambda base: start_redis_cluster(base, replicas=1), cluster_kill_primary),
}


def redis_failover(name: str) -> Callable[[Lab, Path, Scale], Report]:
    """A failover of the worker's Redis under load, on a topology of the scenario's own:
    Sentinel asked to fail over, or its primary killed (-9), or a Cluster primary killed and
    its replica promoted. Repeats can only come from done markers the old primary had
    acknowledged but not yet replicated when it died (or was demoted)."""
    start, fail_over = FAILOVERS[name]

    def scenario(lab: Lab, workdir: Path, scale: Scale) -> Report:
        base = lab.base / "topologies" / name
        if not any(node.pid() for node in recorded_nodes(base)):
            shutil.rmtree(base, ignore_errors=True)  # a fresh topology: roles as first made
        topology = start(base)
        try:
            run = Run(lab, name, workdir, ok, **topology.env)
            # Twice the traffic: a worker slow to start has caught up with the stream before
            # the failover, which then hits steady traffic, not the end of a backlog.
            traffic = build(scale.webhooks * 2, seed=43)
            try:
                producer = run.send(traffic, scale.rate)
                run.worker.start()
                run.wait_for_calls(len(traffic.unique_events) // 4)
                failover = fail_over(topology)
                fault_at = failover.at
                producer.join()
                processed, dlq = run.settle(traffic)
                report = run.report(traffic, processed, dlq)
                report.stall_s = run.stall_since(fault_at)
                absent = run.markers_absent(traffic.unique_events)
                report.markers_missing = len(absent)
                report.note = _failover_note(run, report, failover, fault_at, absent)
                return report
            finally:
                run.close()
        finally:
            topology.stop()

    return scenario


def _failover_note(
    run: Run, report: Report, failover: Failover, fault_at: float, absent: set[str]
) -> str:
    """How long the failover took, what the old primary wrote that the new one never got, how
    many done markers were lost and until when, and which repeats a lost marker explains: those
    of events first handled before the new primary served or, when the old primary stayed up,
    before the last marker seen lost, each plus the time a claim taken ahead is trusted. A
    repeat of an event first handled later has another cause (counted in
    `report.unexplained_repeats`, which must stay 0)."""
    first: dict[str, float] = {}
    repeated: set[str] = set()
    for call in sorted(run.handler.calls, key=lambda c: c.at):
        if 200 <= call.status < 300:
            if call.event_key in first:
                repeated.add(call.event_key)
            first.setdefault(call.event_key, call.at)
    # Until when, from the fault on, the worker's writes went where they were lost (after a
    # kill nothing can be written to the dead primary; a demoted one takes writes until the
    # worker leaves it): the markers missing at the end say it.
    lost_at = [first[key] for key in absent & first.keys()]
    report.lost_window_s = max(0.0, max(lost_at, default=fault_at) - fault_at)
    # An event's claim may be taken ahead (while the event before it is handled) and trusted
    # for up to half the lease: a claim lost with the old primary shows as a repeat that late.
    trusted_s = int(run.env["CLAIM_LEASE_MS"]) / 2 / 1000
    explained_until = fault_at + max(failover.seconds, report.lost_window_s) + trusted_s
    report.unexplained_repeats = sum(1 for key in repeated if first[key] > explained_until)
    lost = failover.unreplicated_bytes
    return (
        f"new primary after {failover.seconds:.1f}s; "
        f"lost with the old primary: {'-' if lost is None else f'{lost} B'}; "
        f"done markers lost: {report.markers_missing} missing at the end + "
        f"{len(repeated)} written again by a repeat; "
        f"{report.unexplained_repeats} repeats not explained by a lost marker; "
        f"writes lost until {report.lost_window_s:.1f}s after the fault"
    )


SCENARIOS: dict[str, Callable[[Lab, Path, Scale], Report]] = {
    "kill-9": kill_9,
    "redis-down-kept": redis_outage(keep_data=True),
    "redis-down-lost": redis_outage(keep_data=False),
    "kafka-down": broker_outage,
    "handler-flaky": flaky_handler,
    "handler-down": handler_down,
    "sigterm-burst": sigterm_burst,
    "fuzz": fuzz,
    "redis-delay": redis_network("delay"),
    "redis-blackhole": redis_network("blackhole"),
    "redis-reset": redis_network("reset"),
    **{name: redis_failover(name) for name in FAILOVERS},
}
