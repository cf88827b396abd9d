"""The benchmark's pure parts: its data, its /proc readings, and how it judges targets.
(The bench itself runs against the real stack in CI: `make bench-smoke`.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import pytest

from bench import report
from bench.contestants import quix
from bench.models import Contestant, Kind, Latency, RedisKind, Results, Row, RunFigures, Soak
from bench.procstats import cpu_seconds, memory_kb
from bench.suite import SMOKE, contestants
from bench.workload import SHAPES, generate
from wa_worker.models.records import SourcePosition, WebhookEvent
from wa_worker.operators.parse import parse_record


def test_workload_is_one_kilobyte_messages_with_ten_percent_exact_redeliveries():
    workload = generate(5000)
    records = workload.records
    assert 0.08 < 1 - workload.unique / len(records) < 0.12
    seen: set[bytes] = set()
    for record in records:
        assert (record.value in seen) is not record.original  # a redelivery copies an earlier one
        seen.add(record.value)
    sizes = sorted(len(r.value) for r in records)
    assert sizes[0] > 900 and sizes[-1] < 1300
    conversations = set()
    for record in records[:500]:
        (event,) = parse_record(record.value, None)
        assert isinstance(event, WebhookEvent) and event.webhook_id.encode() == record.key
        conversations.add(event.conversation_key)
    assert len(conversations) > 350  # spread over many conversations (~400 expected)
    assert generate(5000).records == records  # deterministic


def test_streams_are_new_webhooks_and_outputs_count_them():
    workload = generate(1000)
    stream = list(workload.stream(2500))
    assert len(stream) == 2500
    assert not {r.key for r in stream} & {r.key for r in workload.records}
    for sent in (0, 1, 999, 1000, 1700, 2500):
        assert workload.outputs(sent, dedupes=True) == len({r.key for r in stream[:sent]})
        assert workload.outputs(sent, dedupes=False) == sent
    counts = Counter(r.key for r in stream)
    assert sum(counts.values()) - len(counts) == 2500 - workload.outputs(2500, True)


def test_proc_readings_of_a_live_and_a_finished_process():
    assert (cpu_seconds(os.getpid()) or 0) > 0
    rss, hwm = memory_kb(os.getpid()) or (0, 0)
    assert 0 < rss <= hwm
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert cpu_seconds(gone.pid) is None and memory_kb(gone.pid) is None


def _row(
    letter: str,
    kind: Kind,
    rate: float,
    handler_ms: int | None = None,
    shape: str = "base",
    cpu: float = 1.0,
    redis: RedisKind = RedisKind.STANDALONE,
    **kw: float,
) -> Row:
    contestant = Contestant(
        letter=letter,
        label=f"{letter} {handler_ms} {shape}"
        + ("" if redis is RedisKind.STANDALONE else f" {redis}"),
        kind=kind,
        events=1000,
        handler_ms=handler_ms,
        shape=shape,
        redis=redis,
    )
    figures = RunFigures(rate=rate, cpu_s_per_10k=cpu, peak_rss_mb=50.0, seconds=1.0)
    latency = Latency(
        rate=rate / 2,
        sent=10,
        p50_ms=kw.get("p50", 5),
        p99_ms=kw.get("p99", 20),
        acked_p99_ms=kw.get("acked_p99"),
    )
    return Row(contestant=contestant, runs=[figures], latency=latency)


def test_targets_say_met_or_miss_with_their_figures():
    results = Results(
        mode="full",
        events=1000,
        runs=1,
        machine="test",
        rows=[
            _row("A", Kind.CEILING, 40_000),
            _row("B", Kind.TUNED, 10_000),
            _row("C", Kind.NAIVE, 500),
            _row("D", Kind.WORKER, 4_000, p99=380, cpu=2.0, acked_p99=250),
            _row("E", Kind.QUIX, 8_000, cpu=1.5),
            _row("C", Kind.NAIVE, 19, handler_ms=50),
            _row("D", Kind.WORKER, 1_200, handler_ms=50),
            _row("D", Kind.WORKER, 3_600, shape="few", cpu=1.0),
            _row("E", Kind.QUIX, 3_000, shape="few", cpu=1.2),
        ],
        soak=Soak(events=100_000, rss_mb_at_10pct=100, rss_mb_at_end=125),
    )
    lines = report.targets(results).splitlines()

    def line(start: str) -> str:
        (found,) = [x for x in lines if x[9:].startswith(start)]
        return found

    assert line("worker >= 0.5 x B").startswith("  [MISS]") and "0.40 x" in line("worker >= 0.5")
    assert line("worker >= 5 x C").startswith("  [met ]") and "8.00 x" in line("worker >= 5 x C")
    assert line("worker >= 0.9 x B").startswith("  [MISS]")
    assert line("worker >= 1.0 x Quix Streams, base").startswith("  [MISS]")
    assert "0.50 x (4,000 vs 8,000)" in line("worker >= 1.0 x Quix Streams, base")
    assert line("worker CPU per event <= Quix Streams', base").startswith("  [MISS]")
    assert line("worker >= 1.0 x Quix Streams, few").startswith("  [met ]")
    assert line("worker CPU per event <= Quix Streams', few").startswith("  [met ]")
    assert line("worker, few conversations >= 0.8 x base").startswith("  [met ]")
    assert line("D 50 base >= 1,000 events/s per process").startswith("  [met ]")
    p99 = line("worker p99 < 300 ms reorder window + 50 ms")
    assert p99.startswith("  [MISS]") and "380.0 ms" in p99
    assert "acknowledgement by Kafka p99 250.0 ms" in p99  # the broker's share, beside it
    assert line("memory flat").startswith("  [MISS]") and "+25.0 %" in line("memory flat")
    assert not any("3 brokers" in x for x in lines)  # no cluster row: no line about it
    cluster = _row("D", Kind.WORKER, 3_000).model_copy(
        update={
            "contestant": Contestant(
                letter="D", label="D 3", kind=Kind.WORKER, events=1000, cluster=True
            )
        }
    )
    with_cluster = results.model_copy(update={"rows": [*results.rows, cluster]})
    last = report.targets(with_cluster).splitlines()[-1]
    assert last.startswith("  [MISS] worker on 3 brokers SASL_SSL >= 0.8 x on 1 broker")
    assert "0.75 x (3,000 vs 4,000)" in last
    ratios = report.ratios(results)
    assert "D/A   0.10   D/B   0.40   D/C   8.00   D/E   0.50   CPU D/E   1.33" in ratios
    assert "D/C  63.16" in ratios  # the 50 ms worker against the 50 ms naive port only
    assert "D/E   1.20   CPU D/E   0.83" in ratios  # the few-conversations pair, and only E


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_counts_the_events_the_worker_and_quix_see(shape):
    """The expected output count is the number of unique event keys the worker's parser finds,
    and contestant E's split finds the same keys and conversations."""
    workload = generate(2000, shape)
    worker_keys, quix_keys = {}, {}
    for record in workload.records:
        source = SourcePosition(topic="t", partition=0, offset=0)
        for item in parse_record(record.value, source):
            assert isinstance(item, WebhookEvent)
            worker_keys[item.event_key] = item.conversation_key
        for event in quix.split(json.loads(record.value)):
            quix_keys[event["event_key"]] = event["conversation_key"]
    assert len(worker_keys) == workload.unique == workload.outputs(len(workload.records), True)
    assert quix_keys == worker_keys
    conversations = set(worker_keys.values())
    assert len(conversations) <= SHAPES[shape].conversations


def test_shapes_differ_as_documented():
    few = generate(2000, "few")
    customers = {
        json.loads(r.value)["body"]["entry"][0]["changes"][0]["value"]["contacts"][0]["wa_id"]
        for r in few.records
    }
    assert len(customers) <= 60
    batched = generate(2000, "batched")
    per_webhook = [
        sum(
            len(c["value"].get("messages", [])) + len(c["value"].get("statuses", []))
            for c in json.loads(r.value)["body"]["entry"][0]["changes"]
        )
        for r in batched.records
    ]
    assert max(per_webhook) > 1 and batched.unique > len(batched.records)
    ids = [r.key for r in batched.records]
    assert len(set(ids)) == len(ids)  # its redeliveries come under new webhook ids...
    assert sum(1 for r in batched.records if not r.original) > 100  # ...carrying old events
    campaign = generate(2000, "campaign")
    statuses = [
        s["status"]
        for r in campaign.records
        for c in json.loads(r.value)["body"]["entry"][0]["changes"]
        for s in c["value"].get("statuses", [])
    ]
    assert set(statuses) == {"sent", "delivered", "read"}


def test_cluster_and_tls_rows_are_compared_with_standalone_in_the_same_run():
    rows = contestants(SMOKE, SMOKE.events)  # smoke mode runs them too
    assert {c.redis for c in rows if c.kind is Kind.WORKER} == set(RedisKind)
    results = Results(
        mode="full",
        events=1000,
        runs=1,
        machine="test",
        rows=[
            _row("D", Kind.WORKER, 3_000, redis=RedisKind.CLUSTER),  # listed before standalone
            _row("D", Kind.WORKER, 4_000),
            _row("D", Kind.WORKER, 3_600, redis=RedisKind.TLS),
        ],
    )
    ratios = report.ratios(results)
    assert "D None base cluster" in ratios and "D/D standalone   0.75" in ratios
    assert "D/D standalone   0.90" in ratios
    targets = report.targets(results)
    assert (
        "[MISS] D None base cluster >= 0.8 x standalone (same run): 0.75 x (3,000 vs 4,000)"
        in targets
    )
    assert (
        "[met ] D None base tls >= 0.8 x standalone (same run): 0.90 x (3,600 vs 4,000)" in targets
    )


def test_the_row_without_the_reorder_window_is_compared_with_the_d_row_not_taken_for_it():
    rows = contestants(SMOKE, SMOKE.events)
    (off,) = [c for c in rows if c.reorder_window_ms is not None]
    assert off.reorder_window_ms == 0 and off.group == "base" and off.letter == "D"
    windowless = _row("D", Kind.WORKER, 5_000, p99=40)
    windowless = windowless.model_copy(
        update={
            "contestant": windowless.contestant.model_copy(
                update={"label": "D window off", "reorder_window_ms": 0}
            )
        }
    )
    results = Results(
        mode="full",
        events=1000,
        runs=1,
        machine="test",
        rows=[windowless, _row("D", Kind.WORKER, 4_000, p99=380)],  # listed before the D row
    )
    assert "D/D window on   1.25" in report.ratios(results)
    targets = report.targets(results)
    assert "[met ] D window off: p99 < 50 ms at half its peak: p99 40.0 ms" in targets
    assert "p99 380.0 ms" in targets  # the windowed D row's own latency target


def test_the_observer_waits_for_a_topic_that_is_not_known_yet(stack):
    """On a 3-broker cluster a topic just created can be unknown to the broker the observer
    asks; it used to assign that empty answer and watch nothing. Here the topic appears 1 s
    after the observer starts looking, and the observer then sees its records."""
    import threading
    import time
    import uuid

    from confluent_kafka import Producer

    from bench.observer import Observer
    from devtools.devstack import create_topics

    topic = f"t{uuid.uuid4().hex[:10]}.processed"
    creator = threading.Timer(1.0, create_topics, (stack.brokers, [topic]), {"partitions": 3})
    creator.start()
    began = time.monotonic()
    observer = Observer(stack.brokers, topic).start()
    try:
        assert time.monotonic() - began >= 1.0
        producer = Producer({"bootstrap.servers": stack.brokers})
        for i in range(30):
            producer.produce(topic, f"record {i}".encode(), partition=i % 3)
        assert producer.flush(30) == 0
        deadline = time.monotonic() + 30
        while observer.count < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert observer.count == 30
    finally:
        creator.join()
        observer.stop()


def test_each_kafka_stack_is_warmed_up_before_its_first_row_and_not_counted(monkeypatch, tmp_path):
    from bench import suite
    from bench.measure import Context

    plan = replace(SMOKE, runs=2, warm_up_runs=2, cluster_row=True)
    rows = [c for c in contestants(plan, 100) if c.letter == "D" and not c.handler_ms][:3]
    assert [c.cluster for c in rows] == [False, True, False]  # D, D on the cluster, D again
    calls: list[tuple[str, str]] = []

    def throughput(ctx: object, contestant: Contestant, run_dir: object) -> RunFigures:
        calls.append((contestant.label, str(run_dir).rsplit("-", 1)[-1]))
        return RunFigures(rate=100.0, cpu_s_per_10k=1.0, peak_rss_mb=1.0, seconds=1.0)

    monkeypatch.setattr(suite, "throughput", throughput)
    monkeypatch.setattr(suite, "latency", lambda *a: Latency(rate=1, sent=1, p50_ms=1, p99_ms=1))
    ctx = Context(None, {"base": generate(10, "base")}, tmp_path, 30.0, {})  # type: ignore[arg-type]
    results = suite.run_rows(ctx, plan, rows)
    warm = [label for label, run in calls if run.startswith("up")]
    assert warm == [rows[0].label] * 2 + [rows[1].label] * 2  # once per stack, not per row
    assert [len(r.runs) for r in results] == [2, 2, 2]  # warm-up runs are not in the figures


def test_the_rows_of_a_group_take_their_runs_in_turn_and_a_failure_stops_only_its_row(
    monkeypatch, tmp_path
):
    from bench import suite
    from bench.measure import ContestantFailed, Context

    plan = replace(SMOKE, runs=3, warm_up_runs=0, cluster_row=True)
    rows = [c for c in contestants(plan, 100) if not c.handler_ms and c.shape == "base"][:6]
    labels = [c.label for c in rows]
    assert labels[3:6] == ["D worker", "D worker, 3 brokers SASL_SSL", "D worker, 2 processes"]
    rows.append(next(c for c in contestants(plan, 100) if c.label == "E Quix Streams"))
    calls: list[tuple[str, str]] = []

    def throughput(ctx: object, contestant: Contestant, run_dir: object) -> RunFigures:
        calls.append((contestant.label, str(run_dir).rsplit("-", 1)[-1]))
        if contestant.label == "D worker, 3 brokers SASL_SSL" and len(calls) > 9 + 3:
            raise ContestantFailed("broke in its second run")
        return RunFigures(rate=100.0, cpu_s_per_10k=1.0, peak_rss_mb=1.0, seconds=1.0)

    monkeypatch.setattr(suite, "throughput", throughput)
    monkeypatch.setattr(suite, "latency", lambda *a: Latency(rate=1, sent=1, p50_ms=1, p99_ms=1))
    ctx = Context(None, {"base": generate(10, "base")}, tmp_path, 30.0, {})  # type: ignore[arg-type]
    results = suite.run_rows(ctx, plan, rows)
    d, cluster, e = "D worker", "D worker, 3 brokers SASL_SSL", "E Quix Streams"
    order = [label for label, _ in calls]
    assert order[:9] == [labels[0]] * 3 + [labels[1]] * 3 + [labels[2]] * 3  # A, B, C alone
    assert order[9:17] == [d, cluster, e, d, cluster, e, d, e]
    assert order[17:] == ["D worker, 2 processes"] * 3
    assert [r.contestant.label for r in results] == [c.label for c in rows]  # the table's order
    by_label = {r.contestant.label: r for r in results}
    assert len(by_label[d].runs) == len(by_label[e].runs) == 3
    assert by_label[cluster].failure == "broke in its second run"
