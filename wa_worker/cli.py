"""`wa-worker`: run the dataflow with recovery, and operate it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis
import typer

from wa_worker import dlq
from wa_worker.dedupe import DedupeAdmin, DedupeKeys
from wa_worker.replay import replay_command
from wa_worker.settings import Settings, load_settings_or_exit

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Durable WhatsApp Cloud API webhook worker (a Bytewax dataflow).",
)
dlq_app = typer.Typer(help="Inspect and re-drive the dead-letter topic.")
app.add_typer(dlq_app, name="dlq")


@app.callback()
def main() -> None:
    """Settings come from the environment and .env (see README)."""


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(ctx: typer.Context) -> None:
    """Run the dataflow with recovery: `python -m bytewax.run dataflow -r DIR -s S -b B`.

    Initialises the recovery directory when missing. Extra arguments go to bytewax.run
    (e.g. `-w 2` workers, `-i 0 -a "host1:2101;host2:2101"` for a cluster).
    """
    settings = load_settings_or_exit()
    recovery = Path(settings.recovery_dir)
    if not any(recovery.glob("part-*.sqlite3")):
        recovery.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bytewax.recovery",
                str(recovery),
                str(settings.recovery_partitions),
            ],
            check=True,
        )
    argv = [
        sys.executable,
        "-m",
        "bytewax.run",
        "dataflow",
        "-r",
        str(recovery),
        "-s",
        str(settings.snapshot_interval_s),
        "-b",
        str(settings.recovery_backup_interval_s),
        *ctx.args,
    ]
    sys.stdout.flush()
    # exec: signals from the container runtime reach the dataflow process itself.
    os.execv(sys.executable, argv)


app.command("replay")(replay_command)  # offline: the dataflow on a file (wa_worker/replay.py)


@app.command()
def publish(
    path: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="JSON lines: envelopes or bare Meta payloads"
    ),
) -> None:
    """Publish captured webhooks to the inbound topic, to feed a running worker."""
    settings = load_settings_or_exit()
    envelopes = list(dlq.captured_envelopes(path))
    count = dlq.publish(settings, ((key, value, []) for key, value in envelopes))
    typer.echo(f"published {count} webhooks into {settings.kafka_inbound_topic}")


@dlq_app.command("inspect")
def dlq_inspect(
    error_class: str | None = typer.Option(None, "--class", help="only this wa-error-class"),
    limit: int = typer.Option(50, help="show at most this many (newest last)"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table"),
) -> None:
    """List dead letters with their error context, and a count per error class."""
    settings = load_settings_or_exit()
    records = dlq.select(dlq.read_dead_letters(settings), error_class=error_class)
    by_class: dict[str, int] = {}
    for record in records:
        by_class[record.error_class] = by_class.get(record.error_class, 0) + 1
    for record in records[-limit:]:
        summary = record.summary()
        if as_json:
            typer.echo(json.dumps(summary))
        else:
            typer.echo(
                f"{summary['partition']}:{summary['offset']}  {record.error_class:<18} "
                f"{summary.get('event-key') or summary.get('webhook-id') or '-':<40} "
                f"{summary.get('error-reason', '')}"
            )
    typer.echo(f"{len(records)} dead letters: {by_class}", err=True)


@dlq_app.command("redrive")
def dlq_redrive(
    error_class: str | None = typer.Option(None, "--class", help="only this wa-error-class"),
    event_key: str | None = typer.Option(None, help="only this event"),
    webhook_id: str | None = typer.Option(None, help="only this webhook"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show what would be re-driven"),
) -> None:
    """Send dead letters back to the inbound topic. Their events' done markers are removed
    first, so the worker processes them again (other events of the same webhook stay done)."""
    settings = load_settings_or_exit()
    records = dlq.select(dlq.read_dead_letters(settings), error_class, event_key, webhook_id)
    keys = sorted({r.event_key for r in records if r.event_key})
    if dry_run:
        typer.echo(f"would re-drive {len(records)} records ({len(keys)} event markers cleared)")
        return
    _forget(settings, keys)
    count = dlq.publish(settings, dlq.redrive_records(records))
    typer.echo(
        f"re-drove {count} records into {settings.kafka_inbound_topic}; "
        f"cleared {len(keys)} done markers"
    )


def _forget(settings: Settings, event_keys: list[str]) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = DedupeKeys(settings.redis_key_prefix, int(settings.dedupe_ttl_days * 86_400_000))
        DedupeAdmin(client, keys).forget(event_keys)
    finally:
        client.close()


if __name__ == "__main__":
    app()
