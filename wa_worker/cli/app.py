"""`wa-worker`: run the dataflow with recovery, and operate it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from wa_worker.cli import dlq
from wa_worker.cli.dlq_commands import dlq_app
from wa_worker.cli.replay import replay_command
from wa_worker.cli.support import failures_reported
from wa_worker.cli.tools import capture, topics_app
from wa_worker.models import capture_file
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
    """Run the dataflow with recovery: `python -m bytewax.run wa_worker.dataflow -r DIR …`.

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
        # The package's module, so an installed wheel runs without a checkout; from a working
        # directory holding wa_worker/ (a checkout, waxctl's tarball), that copy is the one.
        "wa_worker.dataflow",
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


app.command("replay")(replay_command)  # offline: the dataflow on a file (cli/replay.py)


@app.command()
def ingress() -> None:
    """Serve Meta's webhook endpoint (INGRESS_PORT, INGRESS_PATH): verify, publish, then 200."""
    from wa_worker.ingress.server import main as serve  # aiohttp only for this command

    serve()


@app.command()
def publish(
    path: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="JSON lines: envelopes, bare Meta webhook bodies or captured Kafka records",
    ),
) -> None:
    """Publish a capture file's records to the inbound topic, to feed a running worker.

    Lines are read as replay reads them (wa_worker/models/capture_file.py). Bad lines are not sent:
    each is named (FILE:LINE: reason) and the command exits 1 after sending the others."""
    settings = load_settings_or_exit()
    bad = capture_file.BadLines(path)
    with failures_reported():
        try:
            lines = capture_file.read_file(path)
            count = dlq.publish(settings, capture_file.records(lines, bad))
        finally:
            for note in bad.report():
                typer.echo(f"wa-worker: {note}", err=True)
    typer.echo(f"published {count} records into {settings.kafka_inbound_topic}")
    if bad.count:
        typer.echo(f"wa-worker: {bad.count} bad lines of {path} not published", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
