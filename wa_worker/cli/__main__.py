"""`python -m wa_worker.cli`: the `wa-worker` command."""

from wa_worker.cli.app import app

app()
