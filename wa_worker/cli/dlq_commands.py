"""`wa-worker dlq list | show | redrive`: look into the dead-letter topic and send records back."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import typer
from rich.table import Table

from wa_worker.cli import dlq
from wa_worker.cli.redaction import redact_envelope
from wa_worker.cli.support import failures_reported, progress, stdout_console, when
from wa_worker.cli.topic_reader import ReadRequest
from wa_worker.core.dedupe import DedupeAdmin, MarkerState, dedupe_keys
from wa_worker.core.excerpt import one_line
from wa_worker.core.redis_client import redis_client
from wa_worker.errors import CommandError
from wa_worker.process.logs import redact
from wa_worker.settings import Settings, load_settings_or_exit

dlq_app = typer.Typer(help="Inspect and re-drive the dead-letter topic.", no_args_is_help=True)

CLASS = typer.Option([], "--class", help="only this wa-error-class (repeatable)")
REASON = typer.Option(None, "--reason", help="only reasons containing this (any case)")
SINCE = typer.Option(None, help="dead-lettered at or after: ISO time or age (2h, 30m, 7d)")
UNTIL = typer.Option(None, help="dead-lettered before: ISO time or age")
EVENT_KEY = typer.Option(None, "--event-key", help="only this event")
WEBHOOK_ID = typer.Option(None, "--webhook-id", help="only this webhook")


def _selected(
    settings: Settings,
    classes: list[str],
    reason: str | None,
    since: str | None,
    until: str | None,
    event_key: str | None = None,
    webhook_id: str | None = None,
    refs: frozenset[str] = frozenset(),
) -> list[dlq.DeadLetterRecord]:
    after, before = when(since, "--since"), when(until, "--until")
    where = dlq.DeadLetterFilter(dlq.check_classes(classes), reason, event_key, webhook_id, refs)
    if refs:  # only those offsets are read, and each must be there
        found = [r for r in dlq.read_refs(settings, refs) if r.between(after, before)]
        return dlq.select(found, where)
    request = ReadRequest(since=after, until=before)
    return dlq.select(dlq.read_dead_letters(settings, request), where)


@dlq_app.command("list")
def dlq_list(
    error_class: list[str] = CLASS,
    reason: str | None = REASON,
    since: str | None = SINCE,
    until: str | None = UNTIL,
    event_key: str | None = EVENT_KEY,
    webhook_id: str | None = WEBHOOK_ID,
    limit: int = typer.Option(50, help="show at most this many, the newest (0: all)"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table"),
) -> None:
    """Dead letters (time, class, reason, event, attempts) and a count per error class."""
    settings = load_settings_or_exit()
    with failures_reported():
        records = _selected(settings, error_class, reason, since, until, event_key, webhook_id)
    shown = records[-limit:] if limit > 0 else records
    if as_json:
        for record in shown:
            typer.echo(json.dumps(_redacted_summary(record, settings.secrets())))
    else:
        stdout_console().print(_table(shown, settings.secrets()))
    by_class = Counter(r.error_class for r in records)
    counts = ", ".join(f"{c}: {n}" for c, n in by_class.most_common()) or "none"
    typer.echo(f"{len(records)} dead letters ({len(shown)} shown); {counts}", err=True)


dlq_app.command("inspect", hidden=True, help="Alias of `dlq list`.")(dlq_list)


def _redacted_summary(record: dlq.DeadLetterRecord, secrets: tuple[str, ...]) -> dict[str, Any]:
    """Reasons may quote the handler's reply, phone numbers included: masked like log lines.
    (Only the reason: offsets and ids are digits too, and must stay as they are.)"""
    summary = record.summary()
    if "error-reason" in summary:
        summary["error-reason"] = redact(one_line(summary["error-reason"]), secrets)
    return summary


def _table(records: list[dlq.DeadLetterRecord], secrets: tuple[str, ...]) -> Table:
    table = Table("dead-lettered at", "record", "class", "reason", "event key", "attempts")
    for r in records:
        at = r.at.isoformat(timespec="seconds") if r.at else "-"
        event = r.event_key or (f"webhook {r.webhook_id}" if r.webhook_id else "-")
        attempts = "-" if r.context.attempts is None else str(r.context.attempts)
        reason = redact(one_line(r.reason), secrets)  # dead letters from before: one row each
        table.add_row(at, r.ref, r.error_class, reason, event, attempts)
    return table


@dlq_app.command("show")
def dlq_show(
    ref: str = typer.Argument(..., help="PARTITION:OFFSET of the dead letter, or an event key"),
    show_body: bool = typer.Option(False, "--show-body", help="the envelope unredacted"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object"),
) -> None:
    """One dead letter with all its context headers and its envelope.

    The envelope is redacted unless --show-body: keys and structure stay, and the values of
    structural fields (ids, types, timestamps, statuses, error codes); every other value is
    masked."""
    settings = load_settings_or_exit()
    with failures_reported():
        record, others = _find(settings, ref)
    secrets = () if show_body else settings.secrets()
    envelope: Any = _original(record.value) if show_body else redact_envelope(record.value, secrets)
    summary = record.summary() if show_body else _redacted_summary(record, secrets)
    if as_json:
        typer.echo(json.dumps({**summary, "envelope": envelope}))
    else:
        console = stdout_console()
        table = Table("header", "value", title=f"dead letter {record.ref}")
        for name, value in summary.items():
            table.add_row(name, "" if value is None else str(value))
        console.print(table)
        console.print_json(json.dumps(envelope))
    if others:
        typer.echo(f"{others} older dead letters of this event: `dlq list --event-key`", err=True)


def _find(settings: Settings, ref: str) -> tuple[dlq.DeadLetterRecord, int]:
    if dlq.parse_ref(ref) is not None:
        found = dlq.read_refs(settings, [ref])
    else:
        found = dlq.select(dlq.read_dead_letters(settings), dlq.DeadLetterFilter(event_key=ref))
    if not found:
        raise CommandError(f"no dead letter {ref} on {settings.kafka_dlq_topic}")
    return found[-1], len(found) - 1


def _original(value: bytes) -> Any:
    """The envelope as JSON; as text when not JSON or nested too deep to parse and write back
    (the fuzz harness dead-letters records nested 20,000 levels)."""
    try:
        data = json.loads(value)
        json.dumps({"envelope": data})  # show writes it one level down
        return data
    except (ValueError, RecursionError):
        return value.decode(errors="replace")


@dlq_app.command("redrive")
def dlq_redrive(
    error_class: list[str] = CLASS,
    reason: str | None = REASON,
    since: str | None = SINCE,
    until: str | None = UNTIL,
    event_key: str | None = EVENT_KEY,
    webhook_id: str | None = WEBHOOK_ID,
    ref: list[str] = typer.Option([], "--ref", help="only this PARTITION:OFFSET (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show what would be re-driven"),
) -> None:
    """Publish the chosen dead letters' envelopes to the inbound topic again.

    Headers wa-redrive-of and wa-redrive-at mark them. Markers of events whose last outcome was
    the DLQ are reset so the worker processes them again; events processed since stay done (the
    worker drops the re-drive as a duplicate), as do the other events of the same webhook."""
    settings = load_settings_or_exit()
    with failures_reported():
        chosen = _selected(
            settings, error_class, reason, since, until, event_key, webhook_id, frozenset(ref)
        )
        per_event = dlq.latest_per_event(chosen)
        # Written without their envelope (too large for the DLQ): nothing here to re-drive.
        with_envelope = [r for r in per_event if r.context.envelope_dropped is None]
        records = dlq.latest_per_envelope(with_envelope)
        keys = [r.event_key for r in records if r.event_key]
        markers = _reset_markers(settings, keys, dry_run)
        states = Counter(markers.values())
        report = (
            f"markers: {states[MarkerState.DEAD_LETTERED]} {'to reset' if dry_run else 'reset'}"
            " (processed again), "
            f"{states[MarkerState.PROCESSED]} already processed (will be duplicates), "
            f"{states[MarkerState.IN_FLIGHT]} in flight, {states[MarkerState.ABSENT]} absent"
        )
        if states[MarkerState.IN_FLIGHT]:
            report += " (a worker holds those right now: re-drive them again in a minute)"
        skipped = len(chosen) - len(per_event)
        if skipped:
            report += f"; {skipped} older dead letters of the same events skipped"
        if len(per_event) > len(with_envelope):
            report += (
                f"; {len(per_event) - len(with_envelope)} without their envelope skipped (publish"
                " the originals from wa-source-topic/-partition/-offset)"
            )
        copies = len(with_envelope) - len(records)
        if copies:
            report += (
                f"; {copies} copies of the same envelopes skipped (dead letters without an"
                " event key whose bytes a newer one repeats, as after an earlier re-drive)"
            )
        if dry_run:
            stdout_console().print(_table(records, settings.secrets()))
            typer.echo(f"would re-drive {len(records)} records; {report}")
            return
        with progress("re-driving", len(records)) as bar:
            count = dlq.publish(
                settings, dlq.redrive_records(records, settings.kafka_dlq_topic), bar.advance
            )
    typer.echo(f"re-drove {count} records into {settings.kafka_inbound_topic}; {report}")


def _reset_markers(settings: Settings, keys: list[str], dry_run: bool) -> dict[str, MarkerState]:
    client = redis_client(settings)
    try:
        return DedupeAdmin(client, dedupe_keys(settings)).reset_dead_lettered(keys, dry_run=dry_run)
    finally:
        client.close()
