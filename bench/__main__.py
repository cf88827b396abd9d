"""The side-by-side benchmark: the worker against a ceiling, a hand-tuned loop and a naive port.

    python -m bench                 # full table (~30k events, 3 runs per row)
    python -m bench --smoke         # seconds-scale: every row once, tiny counts (CI)
    python -m bench --soak          # also the worker's memory soak, 100k -> 1M events
    python -m bench --only soak --soak   # the memory soak alone

Runs on a real local Kafka and Redis (`.stack/bench`); see README "Benchmark".
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import FrameType

from bench import report
from bench.launch import kill_all
from bench.measure import ContestantFailed, Context, progress
from bench.models import Results, Soak
from bench.soak import soak
from bench.stack import BENCH_DIR, start_cluster_stack, start_stack, stop_stack
from bench.suite import FULL, SMOKE, contestants, handler_peers, run_rows
from bench.workload import SHAPES, generate

SMOKE_SOAK = 5_000


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts, one run per row")
    parser.add_argument("--events", type=int, help=f"records per run (default {FULL.events:,})")
    parser.add_argument("--runs", type=int, help=f"runs per row (default {FULL.runs})")
    parser.add_argument(
        "--only", default="", help="letters to run, e.g. A,B,D; `soak` for the memory soak alone"
    )
    parser.add_argument(
        "--rows",
        default="",
        help="row labels to run, exactly as the table prints them, separated by |, "
        "e.g. 'D worker|D worker, 3 brokers SASL_SSL'",
    )
    parser.add_argument(
        "--soak",
        type=int,
        nargs="?",
        const=1_000_000,
        default=None,
        help="run the worker's memory soak over N events (default 1,000,000)",
    )
    parser.add_argument(
        "--shapes",
        help="workloads besides base for the D and E rows, e.g. few,mixed "
        f"(default {','.join(FULL.shapes)}; smoke: {','.join(SMOKE.shapes)}; all: "
        f"{','.join(SHAPES)})",
    )
    parser.add_argument("--latency-s", type=float, help="length of each paced latency run")
    parser.add_argument("--stall-s", type=float, default=30.0, help="no output this long: failed")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results.json")
    parser.add_argument("--keep-stack", action="store_true", help="leave Kafka and Redis running")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    started = time.perf_counter()
    plan = SMOKE if args.smoke else FULL
    plan = replace(
        plan,
        events=args.events or plan.events,
        runs=args.runs or plan.runs,
        latency_s=args.latency_s or plan.latency_s,
    )
    if args.shapes is not None:
        unknown = sorted(set(args.shapes.split(",")) - set(SHAPES) - {""})
        if unknown:
            print(f"bench: unknown shape(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
        plan = replace(plan, shapes=tuple(s for s in args.shapes.split(",") if s and s != "base"))
    only = {letter.strip().upper() for letter in args.only.split(",") if letter.strip()}
    rows = [c for c in contestants(plan, plan.events) if not only or c.letter in only]
    if args.rows:
        labels = {label.strip() for label in args.rows.split("|") if label.strip()}
        if unknown_labels := sorted(labels - {c.label for c in rows}):
            print(f"bench: no row is labelled {', '.join(unknown_labels)}", file=sys.stderr)
            return 2
        rows = [c for c in rows if c.label in labels]
    soak_events = args.soak or (SMOKE_SOAK if args.smoke else None)
    machine = f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start"
    logs = BENCH_DIR / "logs" / datetime.now().strftime("%Y%m%d-%H%M%S")
    shapes = sorted({c.shape for c in rows} | {"base"})
    progress(f"generating {plan.events:,} webhooks for each of: {', '.join(shapes)}")
    workloads = {shape: generate(plan.events, shape) for shape in shapes}
    progress("starting Kafka and Redis in .stack/bench")
    stack = start_stack({c.redis for c in rows})
    try:
        cluster = None
        if any(c.cluster for c in rows):
            progress("starting a 3-broker SASL_SSL Kafka cluster in .stack/bench/kafka-cluster")
            cluster = start_cluster_stack(stack.redis_url)
        with handler_peers(rows) as urls:
            ctx = Context(stack, workloads, logs, args.stall_s, urls, cluster)
            results = Results(
                mode="smoke" if args.smoke else "full",
                events=plan.events,
                runs=plan.runs,
                machine=machine,
                rows=run_rows(ctx, plan, rows),
            )
            if soak_events and (not only or only & {"D", "SOAK"}):
                results.soak = _soak(ctx, soak_events, logs / "soak")
    finally:
        kill_all()
        if not args.keep_stack:
            stop_stack()
    results.seconds = time.perf_counter() - started
    _publish(results, args.out)
    failed = [r for r in results.rows if r.failure] + (
        [results.soak] if results.soak and results.soak.failure else []
    )
    return 1 if failed else 0


def _soak(ctx: Context, events: int, run_dir: Path) -> Soak:
    progress(f"memory soak over {events:,} events")
    try:
        return soak(ctx, events, run_dir)
    except ContestantFailed as exc:
        progress(f"soak FAILED: {exc}")
        return Soak(events=events, rss_mb_at_10pct=0, rss_mb_at_end=0, failure=str(exc))


def _publish(results: Results, out: Path) -> None:
    print(
        f"\nwa-worker bench, {results.mode} mode: {results.events:,} records per run, "
        f"median of {results.runs} run(s); {results.machine}; took {results.seconds:.0f}s\n"
    )
    print(report.table(results))
    print()
    print(report.ratios(results))
    print()
    print(report.targets(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(results.model_dump_json(indent=2))
    png = out.with_suffix(".png")
    drawn = report.plot(results, png)
    print(f"\nresults: {out}" + (f", plot: {png}" if drawn else " (no plot: matplotlib missing)"))


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        kill_all()
        sys.exit(130)
