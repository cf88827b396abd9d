"""`wa-worker replay FILE.jsonl`: the worker's own operators on a file, offline, no Kafka.

Reads the file line by line (envelopes, bare Meta webhook bodies or captured Kafka records, as
`wa_worker.models.capture_file` reads them for every command), runs them through the worker's
dataflow (`dataflow.build`: parse, dedupe, handler with retries and backoff) and writes
`processed.jsonl` and `dlq.jsonl` with the records the worker would write to Kafka. Dedupe uses
Redis when REDIS_URL answers, else a store in process memory. In Redis its keys have a prefix
of their own (REDIS_KEY_PREFIX + "replay:" unless --dedupe-prefix says otherwise): a replay
must not mark events done for the running worker. The handler settings apply, so
yesterday's traffic can be replayed against a new handler build. The run ends by itself once
the file is read and every event has its outcome, waiting retries included.

It runs in this process on one Bytewax worker, without recovery: an interrupted replay starts
over (with Redis, the events it finished are then dropped as duplicates).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import typer
from bytewax.errors import BytewaxRuntimeError
from bytewax.testing import run_main
from prometheus_client import REGISTRY
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from wa_worker import dataflow
from wa_worker.core.dedupe import redis_store
from wa_worker.core.masking import mask_secrets
from wa_worker.core.memory_dedupe import memory_store
from wa_worker.core.redis_client import redis_client
from wa_worker.core.runtime import StoreFactory
from wa_worker.core.services import Services
from wa_worker.operators.file_source import FileSource, LineCounts
from wa_worker.operators.finish import FinishTracker
from wa_worker.process import logs
from wa_worker.process.startup import configure_tracing_or_exit, require_handler
from wa_worker.settings import Settings, load_settings_or_exit
from wa_worker.sinks.file_sink import DLQ_FILE, PROCESSED_FILE, FileOutcomeSink, OutcomeTally


@dataclass(frozen=True)
class DedupeChoice:
    factory: StoreFactory
    durable: bool  # done markers outlive the process: outputs are fsynced before marking
    description: str  # which store, for the summary
    note: str = ""  # why, when it is not the one REDIS_URL names


REPLAY_PREFIX_SUFFIX = "replay:"


def replay_prefix(settings: Settings, given: str | None) -> str:
    """The replay's own Redis key prefix unless one is given: sharing the worker's markers
    would make it drop the same webhooks later as duplicates."""
    return settings.redis_key_prefix + REPLAY_PREFIX_SUFFIX if given is None else given


def choose_dedupe(
    settings: Settings, in_memory: bool, prefix: str | None = None, timeout_s: float = 1.0
) -> DedupeChoice:
    """Redis when REDIS_URL answers a PING within `timeout_s`, else process memory. In Redis,
    under `replay_prefix` (the worker's own prefix only when `prefix` names it)."""
    memory = "in-process memory"
    within = "duplicates are recognised within this run only"
    if in_memory:
        return DedupeChoice(memory_store, False, memory, f"--in-memory: {within}")
    url = mask_secrets(settings.redis_url)
    client = redis_client(settings, timeout_s)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001  (any failure: fall back, and say why)
        reason = mask_secrets(f"{type(exc).__name__}: {exc}")[:200]
        note = f"Redis at {url} is not reachable ({reason}): {within}"
        return DedupeChoice(memory_store, False, memory, note)
    finally:
        client.close()
    keys = replay_prefix(settings, prefix)
    worker = settings.redis_key_prefix
    if keys == worker:
        whose = "the worker's own: what this run finishes, the worker drops as duplicates"
    else:
        whose = f"apart from the worker's {worker!r}"
    own = settings.model_copy(update={"redis_key_prefix": keys})
    return DedupeChoice(
        lambda _settings: redis_store(own), True, f"Redis {url} (prefix {keys!r}, {whose})"
    )


class ReplaySummary(BaseModel):
    file: str
    out_dir: str
    dedupe: str
    lines: int
    blank_lines: int
    envelopes: int  # envelope lines, bare bodies wrapped into one included
    bare_bodies: int
    kafka_records: int  # captured Kafka records, read as they were
    bad_lines: int  # neither of those: dead-lettered with their reason
    not_json: int  # of the bad lines, those not JSON at all
    bad: list[str]  # the first bad lines, as FILE:LINE: reason
    events: int
    processed: int
    duplicates: int
    retried_events: int
    retries: int
    dead_lettered: dict[str, int]
    dead_lettered_events: int  # dead letters of single events (not whole bad records)
    handler_calls: int
    elapsed_s: float

    @property
    def unaccounted(self) -> int:
        """Events with neither an outcome nor a duplicate verdict: 0 unless something broke."""
        return self.events - self.processed - self.dead_lettered_events - self.duplicates


def replay_file(
    path: Path,
    out_dir: Path,
    settings: Settings,
    dedupe: DedupeChoice,
    progress: Progress | None = None,
) -> ReplaySummary:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (PROCESSED_FILE, DLQ_FILE):
        (out_dir / name).write_bytes(b"")
    counts, tally, tracker = LineCounts(path), OutcomeTally(), FinishTracker()
    advance: Callable[[int], None] = _ignore
    if progress is not None:
        lines_task = progress.add_task("lines   ", total=count_lines(path))
        records_task = progress.add_task("outcomes", total=None)
        advance = partial(progress.advance, lines_task)
        tally.on_count = partial(progress.advance, records_task)

    before = _counters()
    started = time.monotonic()
    # No signal handlers: the drain never starts, so waiting retries run to their outcome.
    services = Services.create(settings, store_factory=dedupe.factory)
    try:
        # The file is read no faster than the handler keeps up, as the worker reads Kafka.
        source = FileSource(path, counts, tracker, hold=services.hold_input, progress=advance)
        sink = FileOutcomeSink(out_dir, services.runtime(), tally, dedupe.durable)
        flow = dataflow.build("wa-replay", services, source, ("files-out", sink), finish=tracker)
        # One worker, in this thread, no recovery (the Rust binding is untyped).
        run_main(flow)  # type: ignore[no-untyped-call]
    finally:
        services.close()  # writes the done markers still queued
    after = _counters()
    return ReplaySummary(
        file=str(path),
        out_dir=str(out_dir),
        dedupe=dedupe.description,
        lines=counts.lines,
        blank_lines=counts.blank,
        envelopes=counts.envelopes,
        bare_bodies=counts.bare_bodies,
        kafka_records=counts.kafka_records,
        bad_lines=counts.bad.count,
        not_json=counts.not_json,
        bad=counts.bad.report(),
        events=tracker.events,
        processed=tally.processed,
        duplicates=after.duplicates - before.duplicates,
        retried_events=tally.retried_events,
        retries=after.retries - before.retries,
        dead_lettered=dict(sorted(tally.dead_lettered.items())),
        dead_lettered_events=tally.dead_lettered_events,
        handler_calls=after.handler_calls - before.handler_calls,
        elapsed_s=round(time.monotonic() - started, 3),
    )


def _ignore(_count: int) -> None:
    pass


@dataclass(frozen=True)
class _Counters:
    duplicates: int
    retries: int
    handler_calls: int


def _counters() -> _Counters:
    """The worker's own metrics (this process only); the run's figures are their increase."""

    def sample(name: str) -> int:
        return int(REGISTRY.get_sample_value(name) or 0)

    return _Counters(
        sample("wa_events_duplicates_total"),
        sample("wa_events_retried_total"),
        sample("wa_handler_latency_seconds_count"),
    )


def count_lines(path: Path) -> int:
    count, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def summary_table(s: ReplaySummary) -> Table:
    table = Table(title=f"replay of {s.file}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    table.add_row("lines read", str(s.lines), f"{s.blank_lines} blank")
    table.add_row("envelopes", str(s.envelopes), f"{s.bare_bodies} bare bodies wrapped")
    table.add_row("Kafka records", str(s.kafka_records), "captured records, as they were")
    table.add_row("bad lines", str(s.bad_lines), f"{s.not_json} not JSON; dead-lettered")
    table.add_row("events", str(s.events), "split out of the envelopes")
    table.add_row("processed", str(s.processed), f"{s.out_dir}/{PROCESSED_FILE}")
    table.add_row("duplicates", str(s.duplicates), "dropped by dedupe")
    table.add_row("retried", str(s.retried_events), f"events; {s.retries} retries in all")
    total = sum(s.dead_lettered.values())
    table.add_row("dead-lettered", str(total), f"{s.out_dir}/{DLQ_FILE}")
    for error_class, count in s.dead_lettered.items():
        table.add_row(f"  {error_class}", str(count), "")
    table.add_row("handler calls", str(s.handler_calls), "")
    table.add_row("elapsed", f"{s.elapsed_s:.1f} s", "")
    table.add_row("dedupe store", "", s.dedupe)
    if s.unaccounted:
        table.add_row("[red]unaccounted[/red]", str(s.unaccounted), "events without an outcome")
    return table


def replay_command(
    path: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="JSON lines: envelopes, bare Meta webhook bodies or captured Kafka records",
    ),
    out: Path = typer.Option(
        Path("replay-out"), "--out", "-o", help="directory for processed.jsonl and dlq.jsonl"
    ),
    in_memory: bool = typer.Option(
        False, "--in-memory", help="dedupe in process memory even when Redis is reachable"
    ),
    dedupe_prefix: str | None = typer.Option(
        None,
        "--dedupe-prefix",
        help="Redis key prefix of the replay's dedupe (default: REDIS_KEY_PREFIX + 'replay:'); "
        "give REDIS_KEY_PREFIX itself to share the worker's",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Run the worker's dataflow on a file, offline: no Kafka needed.

    Writes processed.jsonl, dlq.jsonl and a summary. Dedupe in Redis when REDIS_URL answers
    (under its own key prefix, apart from the worker's), else in process memory."""
    if dedupe_prefix is not None and not dedupe_prefix:
        raise typer.BadParameter("must not be empty", param_hint="--dedupe-prefix")
    settings = load_settings_or_exit()
    require_handler(settings)  # a HANDLER_CALLABLE typo: one line, not a Rust panic
    logs.configure_from(settings)
    configure_tracing_or_exit("wa-worker-replay")
    err = Console(stderr=True)
    dedupe = choose_dedupe(settings, in_memory, dedupe_prefix)
    note = f"; {dedupe.note}" if dedupe.note else ""
    err.print(f"replay: dedupe in {dedupe.description}{note}", highlight=False, soft_wrap=True)
    show_progress = err.is_terminal and not quiet
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=not show_progress,
        ) as progress:
            summary = replay_file(path, out, settings, dedupe, progress if show_progress else None)
    except (KeyboardInterrupt, BytewaxRuntimeError) as exc:
        # Bytewax reports Ctrl-C as a runtime error "signal received".
        if isinstance(exc, BytewaxRuntimeError) and "signal received" not in str(exc):
            raise
        err.print("replay: interrupted; the output files hold the outcomes written so far")
        raise typer.Exit(130) from None
    for note in summary.bad:  # as publish names them; the lines are in dlq.jsonl too
        err.print(f"replay: bad line {note}", highlight=False, soft_wrap=True, markup=False)
    if as_json:
        sys.stdout.write(summary.model_dump_json() + "\n")
    else:
        Console().print(summary_table(summary))


if __name__ == "__main__":
    typer.run(replay_command)
