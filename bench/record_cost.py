"""`python -m bench.record_cost [--base REV] [--envelopes N] [--rounds R]`: what building the
output records costs, old against new, in one run.

The old code is `sinks/records.py` at REV (default `main`), loaded from git beside the
checkout's. Both build the records of the same outcomes: the benchmark's envelopes of each
shape (bench.workload) parsed by the worker's parser, each event handled with the bench
handler's answer `{"ok": true}`, every tenth one a dead letter. Every record must come out
byte for byte the same (topic, key, value, headers) or the run fails. Prints µs per record of
each, per shape, and new/old; the median of R interleaved rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

from bench.baseline import module_at
from bench.workload import SHAPES, generate
from wa_worker.models.records import (
    DeadLetter,
    ErrorClass,
    Outcome,
    Processed,
    SourcePosition,
    WebhookEvent,
)
from wa_worker.operators.parse import parse_record
from wa_worker.sinks import records as new

MAX_BYTES = 1_048_576


def old_module(rev: str) -> ModuleType:
    return module_at(rev, "sinks/records.py", "bench_old_records")


def outcomes(shape: str, envelopes: int) -> list[Outcome]:
    handled = datetime.now(UTC)
    out: list[Outcome] = []
    for offset, record in enumerate(generate(envelopes, shape).records):
        source = SourcePosition(topic="bench.in", partition=0, offset=offset)
        for item in parse_record(record.value, source, None, None):
            if not isinstance(item, WebhookEvent):
                out.append(item)
            elif len(out) % 10 == 9:
                out.append(
                    DeadLetter(
                        error_class=ErrorClass.HANDLER_PERMANENT,
                        reason="handler answered HTTP 422",
                        webhook_id=item.webhook_id,
                        event_key=item.event_key,
                        attempts=1,
                        source=item.source,
                        status_code=422,
                        event=item,
                    )
                )
            else:
                at = handled + timedelta(microseconds=len(out))
                out.append(
                    Processed(
                        event=item,
                        result={"ok": True},
                        attempts=1,
                        handled_at=at,
                        handler_latency_s=0.0021,
                    )
                )
    return out


def _time(build: Callable[[Outcome], Any], items: list[Outcome]) -> float:
    """µs per record."""
    started = time.perf_counter()
    for item in items:
        build(item)
    return (time.perf_counter() - started) / len(items) * 1e6


def _same(old: ModuleType, items: list[Outcome]) -> None:
    old_topics = old.Topics("processed", "dlq", "inbound")
    new_topics = new.Topics("processed", "dlq", "inbound")
    for item in items:
        a = old.to_record(item, old_topics, MAX_BYTES)
        b = new.to_record(item, new_topics, MAX_BYTES)
        fields = ("topic", "key", "value", "headers", "done")
        if any(getattr(a, f) != getattr(b, f) for f in fields):
            raise SystemExit(f"records differ:\nold {a}\nnew {b}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.record_cost")
    parser.add_argument("--base", default="main", help="git revision of the old code")
    parser.add_argument("--envelopes", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", default="base,mixed,few")
    args = parser.parse_args()
    old = old_module(args.base)
    old_topics = old.Topics("processed", "dlq", "inbound")
    new_topics = new.Topics("processed", "dlq", "inbound")

    def old_build(o: Outcome) -> Any:
        return old.to_record(o, old_topics, MAX_BYTES)

    def new_build(o: Outcome) -> Any:
        return new.to_record(o, new_topics, MAX_BYTES)

    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"unknown shape {shape}")
        items = outcomes(shape, args.envelopes)
        _same(old, items)
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.rounds):  # interleaved: a busy neighbour slows both alike
            times["old"].append(_time(old_build, items))
            times["new"].append(_time(new_build, items))
        o, n = (statistics.median(times[k]) for k in ("old", "new"))
        print(
            f"{shape:>6}: {len(items):,} records (all identical bytes); old {o:.2f} µs/record,"
            f" new {n:.2f} µs/record, new/old {n / o:.2f}"
        )


if __name__ == "__main__":
    main()
