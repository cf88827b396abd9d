"""One contestant run: throughput on pre-loaded records, latency at a paced rate, or the
worker's memory soak. Each uses fresh topics and a fresh Redis prefix, deleted afterwards."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError, Message

from bench.launch import Running, launch
from bench.models import Contestant, Latency, RunFigures
from bench.observer import Observer
from bench.procstats import Sampler
from bench.stack import Stack, bench_producer, create_topics, delete_topics, load, send
from bench.workload import Workload

WARMUP_RECORDS = 20
START_TIMEOUT_S = 120  # the first output may wait for start-up (imports, recovery, metadata)


class ContestantFailed(Exception):
    pass


@dataclass(frozen=True)
class Context:
    stack: Stack
    workloads: dict[str, Workload]
    logs: Path
    stall_s: float
    handler_urls: dict[int, str]
    cluster: Stack | None = None  # the 3-broker SASL_SSL stack, for the rows that use it

    def stack_for(self, contestant: Contestant) -> Stack:
        if not contestant.cluster:
            return self.stack
        if self.cluster is None:
            raise ContestantFailed("the 3-broker cluster was not started")
        return self.cluster

    def workload(self, contestant: Contestant) -> Workload:
        return self.workloads[contestant.shape]

    def url(self, contestant: Contestant) -> str | None:
        return self.handler_urls[contestant.handler_ms] if contestant.handler_ms else None


def throughput(ctx: Context, contestant: Contestant, run_dir: Path) -> RunFigures:
    """The contestant is started and warmed up first (a few webhooks in, their outputs out), so
    start-up, subscription and a repartition stage's first fetch are not counted; then the
    backlog is produced and the clock runs from its first produce to its last output."""
    started = time.perf_counter()
    stack = ctx.stack_for(contestant)
    topics = create_topics(stack)
    workload = ctx.workload(contestant)
    try:
        warmup = list(workload.stream(WARMUP_RECORDS))
        warm_out = workload.outputs(len(warmup), contestant.dedupes)
        records = workload.records[: contestant.events]  # the same bytes for everyone
        expected = workload.outputs(len(records), contestant.dedupes)
        total = len(warmup) + len(records)
        running = launch(contestant, stack, topics, total, run_dir, ctx.url(contestant))
        with Sampler(running.pids) as sampler:
            observer = Observer(stack.brokers, topics.processed, sampler, config=stack.client)
            observer.start()
            try:
                producer = bench_producer(stack, linger_ms=0)
                for record in warmup:
                    send(producer, topics.inbound, record)
                producer.flush(30)
                await_outputs(observer, warm_out, running, ctx.stall_s)
                observer.target = warm_out + expected
                before = sampler.take()
                began_ms = time.time() * 1000  # the processed topic's clock: broker append time
                load(stack, topics.inbound, records)
                await_outputs(observer, warm_out + expected, running, ctx.stall_s)
                peak_kb = sampler.take().hwm_kb
                finish(running, observer, warm_out + expected)
            finally:
                running.kill()
                observer.stop()
        final, last_ms = observer.final_sample, observer.last_ts_ms
        if final is None or last_ms is None or last_ms <= began_ms:
            raise ContestantFailed(f"too few outputs to measure; logs: {running.where()}")
        return RunFigures(
            rate=expected / ((last_ms - began_ms) / 1000),
            cpu_s_per_10k=(final.cpu_s - before.cpu_s) / expected * 10_000,
            peak_rss_mb=peak_kb / 1024,
            seconds=time.perf_counter() - started,
        )
    finally:
        delete_topics(stack, topics)


def latency(
    ctx: Context, contestant: Contestant, rate: float, duration_s: float, run_dir: Path
) -> Latency:
    """Paced input at `rate` records/s for `duration_s`, after a warm-up; latency is the time
    from a webhook's produce call to its output's arrival, both clocked here."""
    stack = ctx.stack_for(contestant)
    topics = create_topics(stack)
    workload = ctx.workload(contestant)
    try:
        warmup = list(workload.stream(WARMUP_RECORDS))
        paced = list(workload.stream(max(int(rate * duration_s), WARMUP_RECORDS)))
        running = launch(
            contestant,
            stack,
            topics,
            len(warmup) + len(paced),
            run_dir,
            ctx.url(contestant),
        )
        producer = bench_producer(stack, linger_ms=0)
        observer = Observer(
            stack.brokers, topics.processed, track_ids=True, config=stack.client
        ).start()
        try:
            for record in warmup:
                send(producer, topics.inbound, record)
            producer.flush(30)
            warm_out = workload.outputs(len(warmup), contestant.dedupes)
            await_outputs(observer, warm_out, running, ctx.stall_s)
            sent: dict[bytes, float] = {}
            acked: list[float] = []  # each send's own wait (a redelivery shares its key)

            def acked_since(at: float) -> Callable[[KafkaError | None, Message], None]:
                def on_acked(err: KafkaError | None, _msg: Message) -> None:
                    if err is None:
                        acked.append((time.perf_counter() - at) * 1000)

                return on_acked

            began = time.perf_counter()
            done = 0
            while done < len(paced):
                due = min(len(paced), int((time.perf_counter() - began) * rate) + 1)
                for record in paced[done:due]:
                    now = time.perf_counter()
                    sent.setdefault(record.key, now)
                    send(producer, topics.inbound, record, acked_since(now))
                done = due
                producer.poll(0)
                time.sleep(0.001)
            producer.flush(30)
            total = warm_out + workload.outputs(len(paced), contestant.dedupes)
            await_outputs(observer, total, running, ctx.stall_s)
            finish(running, observer, total)
        finally:
            running.kill()
            observer.stop()
        received = observer.received
        waits = sorted((received[k] - t) * 1000 for k, t in sent.items() if k in received)
        return Latency(
            rate=rate,
            sent=len(paced),
            p50_ms=statistics.median(waits),
            p99_ms=_p99(waits),
            acked_p50_ms=statistics.median(acked) if acked else None,
            acked_p99_ms=_p99(sorted(acked)) if acked else None,
        )
    finally:
        delete_topics(stack, topics)


def await_outputs(observer: Observer, expected: int, running: Running, stall_s: float) -> None:
    """Until `expected` outputs arrived; fails on a crash or when outputs stop coming."""
    while observer.count < expected:
        check(observer, running, stall_s, f"{observer.count} of {expected} outputs")
        time.sleep(0.02)


def check(observer: Observer, running: Running, stall_s: float, where: str) -> None:
    """Raises when the contestant died, or no output came for `stall_s` (longer at start)."""
    problem = running.failed_exit()
    quiet = time.perf_counter() - observer.last_progress
    limit = stall_s if observer.count else max(stall_s, START_TIMEOUT_S)
    if problem is None and quiet > limit:
        problem = f"no new output for {quiet:.0f}s"
    if problem:
        raise ContestantFailed(f"{problem} ({where}); logs: {running.where()}")


def finish(running: Running, observer: Observer, expected: int) -> None:
    problem = running.finish()
    time.sleep(0.3)  # a stray duplicate would show up by now
    if problem is None and observer.count != expected:
        problem = f"wrote {observer.count} outputs, expected {expected}"
    if problem:
        raise ContestantFailed(f"{problem}; logs: {running.where()}")


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _p99(ascending: list[float]) -> float:
    return ascending[min(len(ascending) - 1, int(len(ascending) * 0.99))]
