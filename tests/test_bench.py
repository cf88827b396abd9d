"""The benchmark's pure parts: its data, its /proc readings, and how it judges targets.
(The bench itself runs against the real stack in CI: `make bench-smoke`.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

from bench import report
from bench.models import Contestant, Kind, Latency, Results, Row, RunFigures, Soak
from bench.procstats import cpu_seconds, memory_kb
from bench.workload import generate
from wa_worker.models.records import WebhookEvent
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
    assert len(conversations) > 400  # spread over many conversations
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


def _row(letter: str, kind: Kind, rate: float, handler_ms: int | None = None, **kw: float) -> Row:
    contestant = Contestant(
        letter=letter,
        label=f"{letter} {handler_ms}",
        kind=kind,
        events=1000,
        handler_ms=handler_ms,
    )
    figures = RunFigures(rate=rate, cpu_s_per_10k=1.0, peak_rss_mb=50.0, seconds=1.0)
    latency = Latency(rate=rate / 2, sent=10, p50_ms=kw.get("p50", 5), p99_ms=kw.get("p99", 20))
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
            _row("D", Kind.WORKER, 4_000, p99=380),
            _row("C", Kind.NAIVE, 19, handler_ms=50),
            _row("D", Kind.WORKER, 1_200, handler_ms=50),
        ],
        soak=Soak(events=100_000, rss_mb_at_10pct=100, rss_mb_at_end=125),
    )
    lines = report.targets(results).splitlines()
    assert lines[1].startswith("  [MISS] worker >= 0.5 x B") and "0.40 x" in lines[1]
    assert lines[2].startswith("  [met ] worker >= 5 x C") and "8.00 x" in lines[2]
    assert lines[3].startswith("  [met ] D 50 >= 1,000 events/s per process")
    assert lines[4].startswith("  [MISS] worker p99 < 300 ms reorder window + 50 ms")
    assert "380.0 ms" in lines[4]
    assert lines[5].startswith("  [MISS] memory flat") and "+25.0 %" in lines[5]
    assert len(lines) == 6  # no cluster row: no line about it
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
    assert "D/A   0.10   D/B   0.40   D/C   8.00" in ratios
    assert "D/C  63.16" in ratios  # the 50 ms worker against the 50 ms naive port only
