"""`python -m bench.observer_cost [--rounds R] [--seconds S]`: what the bench's output reader
costs the brokers while it waits, on the 3-broker SASL_SSL cluster, in one run.

The reader (`bench.observer.Observer`) watches an empty topic with a 5 ms long poll (what it
used to do), then with the 100 ms one it uses now, then not at all; R rounds in turn. Prints
the brokers' CPU over S seconds of each, in % of one core, and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.observer import Observer
from bench.procstats import cpu_seconds
from bench.stack import (
    CLUSTER_DIR,
    Stack,
    create_topics,
    delete_topics,
    start_cluster_stack,
    stop_stack,
)
from devtools.kafka_cluster import open_cluster


def broker_pids() -> list[int]:
    cluster = open_cluster(CLUSTER_DIR)
    if cluster is None:
        raise RuntimeError("the cluster did not start")
    return [pid for node in cluster.nodes.values() if (pid := node.service.pid()) is not None]


def brokers_cpu_s(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


def brokers_percent(pids: list[int], seconds: float) -> float:
    before, began = brokers_cpu_s(pids), time.monotonic()
    time.sleep(seconds)
    return 100 * (brokers_cpu_s(pids) - before) / (time.monotonic() - began)


def measure(stack: Stack, topic: str, wait_ms: int | None, seconds: float) -> float:
    pids = broker_pids()
    if wait_ms is None:
        return brokers_percent(pids, seconds)
    observer = Observer(stack.brokers, topic, config=stack.client, fetch_wait_ms=wait_ms)
    observer.start()
    try:
        time.sleep(2)  # connected, its fetches running
        return brokers_percent(pids, seconds)
    finally:
        observer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    stack = start_cluster_stack("redis://127.0.0.1:1/0")  # no Redis is used here
    topics = create_topics(stack)
    variants: dict[str, int | None] = {"5 ms poll": 5, "100 ms poll": 100, "no reader": None}
    figures: dict[str, list[float]] = {name: [] for name in variants}
    try:
        time.sleep(5)  # the new topic's leaders settled
        for round_ in range(args.rounds):
            for name, wait_ms in variants.items():
                figures[name].append(measure(stack, topics.processed, wait_ms, args.seconds))
                print(f"round {round_ + 1}: {name}: {figures[name][-1]:.1f} % of a core")
    finally:
        delete_topics(stack, topics)
        stop_stack()
    print("medians (the 3 brokers' CPU, % of one core):")
    for name, values in figures.items():
        print(f"  {name:12} {statistics.median(values):6.1f}")


if __name__ == "__main__":
    main()
