"""`wa-worker`: run the dataflow with recovery, and operate it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from wa_worker import dlq
from wa_worker.cli_dlq import dlq_app
from wa_worker.cli_support import failures_reported
from wa_worker.cli_tools import capture, topics_app
from wa_worker.replay import replay_command
from wa_worker.settings import load_settings_or_exit

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Durable WhatsApp Cloud API webhook worker (a Bytewax dataflow).",
)
app.add_typer(dlq_app, name="dlq")
app.add_typer(topics_app, name="topics")
app.command()(capture)


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
    with failures_reported():
        envelopes = list(dlq.captured_envelopes(path))  # every line checked before any is sent
        count = dlq.publish(settings, ((key, value, []) for key, value in envelopes))
    typer.echo(f"published {count} webhooks into {settings.kafka_inbound_topic}")


if __name__ == "__main__":
    app()
