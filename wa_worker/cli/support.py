"""What the operator commands share: consoles, a progress bar, one-line errors, time options."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import redis
import typer
from confluent_kafka import KafkaException
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from wa_worker.core.timespec import parse_when
from wa_worker.errors import WorkerError


def stdout_console() -> Console:
    # Piped output gets wide lines rather than columns folded at 80 characters.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


class Bar:
    def __init__(self, bar: Progress, task: TaskID) -> None:
        self._bar, self._task = bar, task

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._task, n)

    def set_total(self, total: int) -> None:
        self._bar.update(self._task, total=total)


@contextmanager
def progress(label: str, total: int | None = None) -> Iterator[Bar]:
    """A bar on stderr when it is a terminal (else nothing: the summary line says it all)."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
    )
    with bar:
        yield Bar(bar, bar.add_task(label, total=total))


@contextmanager
def failures_reported() -> Iterator[None]:
    """Expected failures (bad input, unknown topic, Kafka or Redis down, a file that cannot be
    written) as one line, exit 1."""
    try:
        yield
    except (WorkerError, TimeoutError, KafkaException) as exc:
        typer.echo(f"wa-worker: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:  # a file to read or write (a missing directory, no permission)
        typer.echo(f"wa-worker: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        raise typer.Exit(1) from None
    except (redis.RedisError, redis.RedisClusterException) as exc:  # the latter: no slot owner
        typer.echo(f"wa-worker: Redis: {exc}", err=True)
        raise typer.Exit(1) from None


def when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_when(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None
