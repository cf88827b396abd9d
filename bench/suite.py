"""Which rows the bench runs, and running them: throughput runs, then a latency run at half
of the row's own median rate."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from bench.measure import ContestantFailed, Context, latency, progress, throughput
from bench.models import Contestant, Kind, RedisKind, Row
from bench.stack import handler_peer

HTTP_DELAYS_MS = (5, 50)
HIGH_CONCURRENCY = 256  # the documented higher HANDLER_CONCURRENCY for the 50 ms row


@dataclass(frozen=True)
class Plan:
    events: int
    runs: int
    latency_s: float
    naive_events: int  # C without a handler call: about 1 ms per record
    naive_http_events: dict[int, int]  # C with a sequential HTTP call, per delay
    shapes: tuple[str, ...]  # workloads besides "base" on which D and E are compared
    # The 3-broker SASL_SSL row: its cluster's start-up (~30-60 s) is too dear for the smoke run.
    cluster_row: bool = True
    # Smoke: one latency run per kind of contestant proves each one's latency path (CI time).
    latency_once_per_kind: bool = False
    # Uncounted runs before the first row on each Kafka stack. A broker's JVM keeps compiling
    # (and recompiling) its hot paths over its first minutes of traffic: on a fresh 3-broker
    # SASL_SSL cluster the JIT took 6-7 s of CPU per 20k-event run, and its runs went 2,104 ->
    # 2,578 -> 3,086 -> 3,429 -> 3,767 -> 4,574 events/s in a row. A production broker is long warm;
    # without this, whichever row comes first on a stack pays for it on a 2-core machine.
    warm_up_runs: int = 5


FULL = Plan(30_000, 3, 10.0, 10_000, {5: 1_500, 50: 300}, ("few", "batched", "campaign", "mixed"))
SMOKE = Plan(
    400,
    1,
    2.0,
    400,
    {5: 100, 50: 30},
    ("mixed",),
    cluster_row=False,
    latency_once_per_kind=True,
    warm_up_runs=0,
)


def contestants(plan: Plan, events: int) -> list[Contestant]:
    def row(
        letter: str,
        label: str,
        kind: Kind,
        count: int = events,
        shape: str = "base",
        cluster: bool = False,
        **kw: Any,
    ) -> Contestant:
        return Contestant(
            letter=letter,
            label=label,
            kind=kind,
            events=count,
            shape=shape,
            cluster=cluster,
            **kw,
        )

    rows = [
        row("A", "A ceiling", Kind.CEILING),
        row("B", "B tuned loop", Kind.TUNED),
        row("C", "C naive port", Kind.NAIVE, min(events, plan.naive_events)),
        row("D", "D worker", Kind.WORKER, group="base"),
        row("D", "D worker, 2 processes", Kind.WORKER, processes=2),
        row("E", "E Quix Streams", Kind.QUIX, group="base"),
        row("D", "D worker, Redis Cluster", Kind.WORKER, redis=RedisKind.CLUSTER),
        row("D", "D worker, Redis over TLS", Kind.WORKER, redis=RedisKind.TLS),
        # What the reorder window (every event waits it) costs, in turns with D and E.
        row("D", "D worker, reorder window off", Kind.WORKER, group="base", reorder_window_ms=0),
    ]
    for shape in plan.shapes:
        rows.append(row("D", f"D worker, {shape}", Kind.WORKER, shape=shape, group=shape))
        rows.append(row("E", f"E Quix Streams, {shape}", Kind.QUIX, shape=shape, group=shape))
    if plan.cluster_row:  # beside the single-broker D row
        cluster = row("D", "D worker, 3 brokers SASL_SSL", Kind.WORKER, cluster=True, group="base")
        rows.insert(4, cluster)
    for ms in HTTP_DELAYS_MS:
        naive = min(events, plan.naive_http_events[ms])
        rows.append(row("C", f"C naive, HTTP {ms} ms", Kind.NAIVE, naive, handler_ms=ms))
        rows.append(row("D", f"D worker, HTTP {ms} ms", Kind.WORKER, handler_ms=ms))
    rows.append(
        row(
            "D",
            f"D worker, HTTP 50 ms, concurrency {HIGH_CONCURRENCY}",
            Kind.WORKER,
            handler_ms=50,
            concurrency=HIGH_CONCURRENCY,
        )
    )
    return rows


def run_rows(ctx: Context, plan: Plan, rows: list[Contestant]) -> list[Row]:
    """Each row's throughput runs, then its latency run; the rows of a group (`Contestant.group`)
    take their throughput runs in turn, where the group's first row stands. The results keep the
    rows' order."""
    results = {contestant: Row(contestant=contestant) for contestant in rows}
    slugs = {
        c: f"{number:02d}-{c.kind.value}-{c.shape}-{c.handler_ms or 0}ms"
        for number, c in enumerate(rows)
    }
    timed: set[Kind] = set()  # kinds with a latency run so far
    warmed: set[bool] = set()  # the stacks (by `Contestant.cluster`) warmed up so far

    def attempt(contestant: Contestant, step: Callable[[], None]) -> None:
        row = results[contestant]
        if row.failure is not None:
            return
        try:
            step()
        except ContestantFailed as exc:
            row.failure = str(exc)
            progress(f"{contestant.label} FAILED: {exc}")

    def warm_up(contestant: Contestant) -> None:
        if contestant.cluster in warmed:
            return
        warmed.add(contestant.cluster)
        for run in range(plan.warm_up_runs):
            progress(
                f"{contestant.label}: warming the brokers up, {run + 1} of "
                f"{plan.warm_up_runs} (not counted)"
            )
            throughput(ctx, contestant, ctx.logs / f"{slugs[contestant]}-warm-up{run + 1}")

    def measure_run(contestant: Contestant, run: int) -> None:
        progress(f"{contestant.label}: run {run + 1} of {plan.runs}")
        figures = throughput(ctx, contestant, ctx.logs / f"{slugs[contestant]}-run{run + 1}")
        results[contestant].runs.append(figures)
        progress(f"  {figures.rate:,.0f} events/s")

    def measure_latency(contestant: Contestant) -> None:
        row = results[contestant]
        if plan.latency_once_per_kind and contestant.kind in timed:
            return
        timed.add(contestant.kind)
        rate = row.rate
        assert rate is not None
        # Half of the peak in outputs, paced in inbound records.
        workload = ctx.workload(contestant)
        per_record = workload.outputs(contestant.events, contestant.dedupes) / contestant.events
        paced = rate / 2 / per_record
        progress(f"{contestant.label}: latency at {paced:,.0f} records/s")
        row.latency = latency(ctx, contestant, paced, plan.latency_s, ctx.logs / slugs[contestant])
        progress(f"  p50 {row.latency.p50_ms:.1f} ms, p99 {row.latency.p99_ms:.1f} ms")
        acked = row.latency.acked_p50_ms, row.latency.acked_p99_ms
        if acked[0] is not None and acked[1] is not None:
            progress(
                f"  the input's acknowledgement by Kafka (readable from then on): "
                f"p50 {acked[0]:.1f} ms, p99 {acked[1]:.1f} ms"
            )

    for group in _groups(rows):
        for contestant in group:
            attempt(contestant, partial(warm_up, contestant))
        for run in range(plan.runs):
            for contestant in group:
                attempt(contestant, partial(measure_run, contestant, run))
        for contestant in group:
            attempt(contestant, partial(measure_latency, contestant))
    return list(results.values())


def _groups(rows: list[Contestant]) -> list[list[Contestant]]:
    """The rows in running order: a row alone, or its whole group where its first row is."""
    groups: dict[str, list[Contestant]] = {}
    order: list[list[Contestant]] = []
    for contestant in rows:
        if contestant.group is None:
            order.append([contestant])
        elif contestant.group in groups:
            groups[contestant.group].append(contestant)
        else:
            groups[contestant.group] = [contestant]
            order.append(groups[contestant.group])
    return order


@contextlib.contextmanager
def handler_peers(rows: list[Contestant]) -> Iterator[dict[int, str]]:
    """A Go peer per handler delay the rows need."""
    delays = sorted({c.handler_ms for c in rows if c.handler_ms})
    with contextlib.ExitStack() as stack:
        yield {ms: stack.enter_context(handler_peer(ms)) for ms in delays}
