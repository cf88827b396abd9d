"""Handler results the worker cannot write (too big, not JSON, refused by the broker) become
dead letters of class `result_unwritable`; the worker lives on and the conversation goes on."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from devtools.kafka import Record, produce, read_topic
from devtools.webhooks import envelope, messages_value, payload, text_event, text_message
from devtools.worker import WorkerProcess
from tests.conftest import Stack, Topics
from tests.support.cli import run_cli
from tests.test_replay import closed_port
from wa_worker.models.records import (
    DeadLetter,
    ErrorClass,
    Processed,
    WebhookEvent,
)
from wa_worker.sinks.file_sink import FileRecord
from wa_worker.sinks.records import Topics as RecordTopics
from wa_worker.sinks.records import to_record

WA_ID = "31612345678"
MAX = 5_242_880
TOPICS = RecordTopics("processed", "dlq", "inbound")


def _event(body: str = "hello") -> WebhookEvent:
    return text_event(wa_id=WA_ID, body=body)


def test_a_result_json_cannot_hold_becomes_a_dead_letter_record() -> None:
    record = to_record(Processed(event=_event(), result={(1, 2): "x"}, attempts=2), TOPICS, MAX)
    headers = dict(record.headers)
    assert (record.topic, record.error_class, record.done) == (
        "dlq",
        "result_unwritable",
        ("wamid.1", "dlq"),
    )
    assert headers["wa-error-reason"].startswith(b"handler result is not JSON: TypeError")
    assert headers["wa-attempts"] == b"2" and headers["wa-source-offset"] == b"7"


def test_a_processed_record_over_the_limit_becomes_a_dead_letter_record() -> None:
    big = Processed(event=_event(), result="r" * (1_048_576 + 1), attempts=1)
    record = to_record(big, TOPICS, 1_048_576)
    assert record.error_class == "result_unwritable"
    assert b"over KAFKA_MAX_MESSAGE_BYTES (1048576)" in dict(record.headers)["wa-error-reason"]
    fits = to_record(big, TOPICS, MAX)
    assert (fits.topic, fits.error_class, fits.unwritable is not None) == ("processed", None, True)


def test_a_dead_letter_over_the_limit_keeps_its_headers_without_the_envelope() -> None:
    letter = DeadLetter(
        error_class=ErrorClass.INVALID_JSON, reason="not JSON", original=b"x" * 1_100_000
    )
    record = to_record(letter, TOPICS, 1_048_576)
    headers = dict(record.headers)
    assert record.value == b"" and headers["wa-error-class"] == b"invalid_json"
    assert b"over KAFKA_MAX_MESSAGE_BYTES" in headers["wa-envelope-dropped"]


def _webhook(webhook_id: str, wamid: str, body: str) -> bytes:
    message = text_message(wamid, WA_ID, body)
    return envelope(webhook_id, payload(messages_value(messages=[message], wa_id=WA_ID)))


def _run(
    stack: Stack,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    handler: str,
    first: tuple[str, str],
) -> tuple[Record, Record, WorkerProcess]:
    """Two events of one conversation, the first one's result unwritable: its dead letter,
    the second one's processed record, and the worker (still running)."""
    wamid, body = first
    produce(
        stack.brokers,
        topics.inbound,
        [
            (b"w-1", _webhook("w-1", wamid, body)),
            (b"w-2", _webhook("w-2", "wamid.next", "after it")),
        ],
    )
    worker = start_worker(HANDLER_CALLABLE=f"tests.support.result_handlers:{handler}")
    processed = read_topic(stack.brokers, topics.processed, until=lambda rs: len(rs) >= 1)
    dlq = read_topic(stack.brokers, topics.dlq, until=lambda rs: len(rs) >= 1)
    assert worker.running(), worker.log()[-3000:]
    assert [r.header("wa-event-key") for r in processed] == ["wamid.next"], worker.log()[-3000:]
    assert [r.header("wa-event-key") for r in dlq] == [wamid]
    return dlq[0], processed[0], worker


def test_a_result_over_the_size_limit_is_a_dead_letter_not_a_crash(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    letter, _, worker = _run(stack, topics, start_worker, "echo", ("wamid.huge", "x" * 2_800_000))
    assert letter.header("wa-error-class") == "result_unwritable"
    reason = letter.header("wa-error-reason") or ""
    assert "KAFKA_MAX_MESSAGE_BYTES" in reason and "x" * 20 not in reason
    # The dead letter still carries the event (an envelope rebuilt around it: over 64 KiB).
    assert json.loads(letter.value)["id"] == "w-1"
    assert "Traceback" not in worker.log()


def test_a_result_json_cannot_hold_is_a_dead_letter_not_a_crash(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    letter, _, worker = _run(
        stack, topics, start_worker, "unserialisable", ("wamid.first.bad", "hello")
    )
    assert letter.header("wa-error-class") == "result_unwritable"
    assert "not JSON" in (letter.header("wa-error-reason") or "")
    assert letter.header("wa-attempts") == "1"
    assert "Traceback" not in worker.log()


def test_a_record_the_broker_refuses_is_a_dead_letter_not_a_crash(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The processed topic takes less than the worker's KAFKA_MAX_MESSAGE_BYTES: librdkafka
    accepts the record and the broker refuses it, in the delivery report."""
    _limit(stack, topics.processed, 1_048_576)
    letter, _, worker = _run(
        stack, topics, start_worker, "incompressible", ("wamid.first.big", "hello")
    )
    assert letter.header("wa-error-class") == "result_unwritable"
    assert "refused" in (letter.header("wa-error-reason") or "")
    assert "Traceback" not in worker.log()


def test_a_dead_letter_the_broker_refuses_is_written_without_its_envelope(
    stack: Stack, topics: Topics, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A 2.8 MB event echoed: its processed record is over the limit, its dead letter (the
    event's rebuilt envelope) over the DLQ topic's smaller one: the headers still go out."""
    _limit(stack, topics.dlq, 1_048_576)
    noise = base64.b64encode(os.urandom(2_100_000)).decode()  # lz4 cannot shrink it under 1 MiB
    letter, _, _ = _run(stack, topics, start_worker, "echo", ("wamid.huge", noise))
    assert letter.header("wa-error-class") == "result_unwritable"
    assert letter.value == b""
    assert "Kafka refused the dead letter" in (letter.header("wa-envelope-dropped") or "")
    assert letter.header("wa-source-topic") == topics.inbound and letter.header("wa-source-offset")


@pytest.mark.parametrize(
    ("handler", "wamid", "body"),
    [("unserialisable", "wamid.first.bad", "hello"), ("echo", "wamid.huge", "x" * 2_800_000)],
)
def test_replay_reports_unwritable_results_as_dead_letters(
    tmp_path: Path, handler: str, wamid: str, body: str
) -> None:
    """The file sink gets the same checks (and KAFKA_MAX_MESSAGE_BYTES) as the Kafka one, so a
    replay test of a new handler catches what the worker would dead-letter."""
    capture = tmp_path / "capture.jsonl"
    lines = [_webhook("w-1", wamid, body), _webhook("w-2", "wamid.next", "after it")]
    capture.write_bytes(b"\n".join(lines) + b"\n")
    env = {
        "HANDLER_CALLABLE": f"tests.support.result_handlers:{handler}",
        "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",  # in-process dedupe
        "KAFKA_BROKERS": f"127.0.0.1:{closed_port()}",
    }
    out = tmp_path / "out"
    result = run_cli(env, "replay", str(capture), "-o", str(out), "--json", module="wa_worker")
    summary = json.loads(result.stdout)
    assert summary["processed"] == 1
    assert summary["dead_lettered"] == {"result_unwritable": 1}
    (letter,) = [
        FileRecord.model_validate_json(x) for x in (out / "dlq.jsonl").read_text().splitlines()
    ]
    assert letter.headers["wa-event-key"] == wamid


def _limit(stack: Stack, topic: str, max_bytes: int) -> None:
    """Lower one topic's max.message.bytes below the worker's KAFKA_MAX_MESSAGE_BYTES."""
    entry = ConfigEntry(
        "max.message.bytes", str(max_bytes), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    admin = AdminClient({"bootstrap.servers": stack.brokers})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def test_redrive_skips_a_dead_letter_written_without_its_envelope(
    stack: Stack, topics: Topics, worker_env: dict[str, str]
) -> None:
    producer = Producer({"bootstrap.servers": stack.brokers})
    headers: list[tuple[str, str | bytes | None]] = [
        ("wa-error-class", b"result_unwritable"),
        ("wa-error-reason", b"processed record of 5600000 bytes is over ..."),
        ("wa-event-key", b"wamid.huge"),
        ("wa-envelope-dropped", b"Kafka refused the dead letter: Broker: Message size too large"),
    ]
    producer.produce(topics.dlq, b"", b"wamid.huge", headers=headers)
    assert producer.flush(30) == 0
    result = run_cli(worker_env, "dlq", "redrive")
    assert "re-drove 0 records" in result.stdout
    assert "1 without their envelope skipped" in result.stdout
    assert read_topic(stack.brokers, topics.inbound) == []
