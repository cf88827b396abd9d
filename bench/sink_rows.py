"""`python -m bench.sink_rows [--events N] [--runs R]`: the two rows the sink's speed on a
cluster is judged by, "D worker" and "D worker, 3 brokers SASL_SSL", in one run (the full
bench runs every D row). Same machinery as `python -m bench`; prints the table and the
cluster row's rate over the single-broker row's."""

from __future__ import annotations

import argparse
from dataclasses import replace
from datetime import datetime

from bench import report
from bench.launch import kill_all
from bench.measure import Context, progress
from bench.models import Results
from bench.stack import BENCH_DIR, start_cluster_stack, start_stack, stop_stack
from bench.suite import FULL, contestants, handler_peers, run_rows
from bench.workload import generate

LABELS = ("D worker", "D worker, 3 brokers SASL_SSL")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink_rows")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--latency-s", type=float, default=5.0)
    args = parser.parse_args()
    plan = replace(FULL, events=args.events, runs=args.runs, latency_s=args.latency_s)
    rows = [c for c in contestants(plan, plan.events) if c.label in LABELS]
    workloads = {"base": generate(plan.events, "base")}
    logs = BENCH_DIR / "logs" / datetime.now().strftime("%Y%m%d-%H%M%S")
    stack = start_stack()
    try:
        progress("starting a 3-broker SASL_SSL Kafka cluster")
        cluster = start_cluster_stack(stack.redis_url)
        with handler_peers(rows) as urls:
            ctx = Context(stack, workloads, logs, 30.0, urls, cluster)
            ran = run_rows(ctx, plan, rows)
            results = Results(mode="full", events=plan.events, runs=plan.runs, machine="", rows=ran)
    finally:
        kill_all()
        stop_stack()
    print(report.table(results))
    single, three = (r.rate for r in results.rows)
    if single and three:
        print(f"3 brokers / 1 broker: {three / single:.2f}x")


if __name__ == "__main__":
    main()
