"""`wa-worker capture` and `wa-worker topics create`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from wa_worker.cli import capture as capturing
from wa_worker.cli.support import failures_reported, progress, stdout_console, when
from wa_worker.cli.topic_reader import ReadRequest, parse_offset_specs
from wa_worker.cli.topics import (
    DLQ_RETENTION_DAYS,
    RETENTION_DAYS,
    cluster_brokers,
    default_replication,
    ensure_topics,
    worker_topics,
)
from wa_worker.settings import load_settings_or_exit

topics_app = typer.Typer(help="Create the worker's Kafka topics.", no_args_is_help=True)


def capture(
    output: Path = typer.Argument(..., dir_okay=False, help="JSON lines file to write"),
    topic: str | None = typer.Option(None, help="topic to read (default: the inbound topic)"),
    since: str | None = typer.Option(None, help="records at or after: ISO time or age (2h)"),
    until: str | None = typer.Option(None, help="records before: ISO time or age"),
    from_offset: list[str] = typer.Option(
        [], "--from-offset", help="first offset, N or PARTITION:N (repeatable)"
    ),
    to_offset: list[str] = typer.Option(
        [], "--to-offset", help="end offset (not included), N or PARTITION:N (repeatable)"
    ),
    partition: list[int] = typer.Option([], help="only this partition (repeatable)"),
) -> None:
    """Save records of a topic as JSON lines, for `wa-worker replay` or `publish` elsewhere.

    Reads up to the end the topic had when the capture started. An envelope keyed by its id is
    saved as it is; any other record byte for byte as {"kafka_record": …}, and counted."""
    settings = load_settings_or_exit()
    name = topic or settings.kafka_inbound_topic
    with failures_reported():
        request = ReadRequest(
            partitions=frozenset(partition) or None,
            since=when(since, "--since"),
            until=when(until, "--until"),
            from_offsets=parse_offset_specs(from_offset) or None,
            to_offsets=parse_offset_specs(to_offset) or None,
        )
        # Written aside and renamed at the end: a failed capture leaves no half file behind.
        partial = output.with_name(output.name + ".partial")
        try:
            with progress(f"capturing {name}") as bar, partial.open("wb") as out:
                summary = capturing.capture(
                    settings, name, request, out, on_planned=bar.set_total, on_record=bar.advance
                )
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(output)
    too_deep = f", {summary.too_deep} nested too deep to parse" if summary.too_deep else ""
    ranges = ", ".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(summary.offsets.items())) or "-"
    typer.echo(
        f"captured {summary.records} records from {name} into {output}: "
        f"{summary.envelopes} envelopes, {summary.raw} other records (saved byte for byte as "
        f"kafka_record lines, {summary.not_json} not JSON{too_deep}); offsets {ranges}"
    )


@topics_app.command("create")
def topics_create(
    partitions: int = typer.Option(3, min=1, help="partitions of each topic (grown if larger)"),
    replication_factor: int | None = typer.Option(
        None, min=1, help="replicas of each partition (default: 3, or the brokers if fewer)"
    ),
    retention_days: float = typer.Option(
        RETENTION_DAYS, min=0.01, help="inbound and processed retention"
    ),
    dlq_retention_days: float = typer.Option(DLQ_RETENTION_DAYS, min=0.01, help="DLQ retention"),
) -> None:
    """Create the inbound, processed and DLQ topics named in the settings.

    Idempotent: existing topics are reported, and grown when --partitions is larger."""
    settings = load_settings_or_exit()
    with failures_reported():
        if replication_factor is None:
            replication_factor, _ = default_replication(cluster_brokers(settings.admin_config()))
        specs = worker_topics(
            settings, partitions, replication_factor, retention_days, dlq_retention_days
        )
        results = ensure_topics(settings.admin_config(), specs)
    table = Table("topic", "action", "partitions", "notes")
    for r in results:
        table.add_row(r.name, r.action.value, str(r.partitions), "; ".join(r.notes))
    stdout_console().print(table)
