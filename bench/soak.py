"""The worker's memory over a long run: fed continuously (at most LEAD records ahead of its
output), VmRSS read when 10 % and when 100 % of the records have been handled."""

from __future__ import annotations

import time
from pathlib import Path

from bench.launch import launch
from bench.measure import Context, await_outputs, check, finish, progress
from bench.models import Contestant, Kind, Soak
from bench.observer import Observer
from bench.procstats import Sampler
from bench.stack import bench_producer, create_topics, delete_topics, send

LEAD = 20_000


def soak(ctx: Context, events: int, run_dir: Path) -> Soak:
    worker = Contestant(letter="D", label="D worker soak", kind=Kind.WORKER, events=events)
    workload = ctx.workload(worker)
    topics = create_topics(ctx.stack.brokers)
    try:
        running = launch(worker, ctx.stack, topics, events, run_dir, None)
        producer = bench_producer(ctx.stack.brokers)
        with Sampler(running.pids) as sampler:
            observer = Observer(ctx.stack.brokers, topics.processed, sampler).start()
            try:
                marks = {events // 10: 0.0, events: 0.0}
                for sent, record in enumerate(workload.stream(events)):
                    while observer.count < workload.outputs(max(sent - LEAD, 0), True):
                        check(observer, running, ctx.stall_s, f"soak, {sent:,} sent")
                        _mark(observer, ctx, marks, sampler)
                        time.sleep(0.01)
                    send(producer, topics.inbound, record)
                    if sent % 1000 == 0:
                        producer.poll(0)
                        _mark(observer, ctx, marks, sampler)
                    if (sent + 1) % max(events // 10, 1) == 0:
                        progress(f"soak: {sent + 1:,} of {events:,} records sent")
                producer.flush(60)
                total = workload.outputs(events, dedupes=True)
                await_outputs(observer, total, running, ctx.stall_s)
                _mark(observer, ctx, marks, sampler)
                finish(running, observer, total)
            finally:
                running.kill()
                observer.stop()
        return Soak(
            events=events,
            rss_mb_at_10pct=marks[events // 10] / 1024,
            rss_mb_at_end=marks[events] / 1024,
            rate=observer.rate(events),
        )
    finally:
        delete_topics(ctx.stack.brokers, topics)


def _mark(observer: Observer, ctx: Context, marks: dict[int, float], sampler: Sampler) -> None:
    """VmRSS at the first look after each mark's outputs have all arrived."""
    for handled, rss in marks.items():
        if not rss and observer.count >= ctx.workloads["base"].outputs(handled, True):
            marks[handled] = sampler.take().rss_kb
