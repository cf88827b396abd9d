"""`python -m wa_worker.replay FILE`: `wa-worker replay FILE`, under the module name the README
has always given it (the command lives in wa_worker/cli/replay.py)."""

if __name__ == "__main__":
    import typer

    from wa_worker.cli.replay import replay_command

    typer.run(replay_command)
