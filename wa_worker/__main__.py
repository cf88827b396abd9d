"""`python -m wa_worker …`: the `wa-worker` command line."""

from wa_worker.cli.app import app

app(prog_name="wa-worker")
