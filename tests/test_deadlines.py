"""Retry deadlines and staleness in the conversation logic, driven by hand (no I/O), and the
processed record's event time and age."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from devtools.webhooks import envelope, messages_value, payload, status, text_message
from tests.test_conversation import Clock, FakeSubmitter, claimed
from wa_worker.errors import ConfigError
from wa_worker.models.completions import HandleResult, HandleStatus
from wa_worker.models.records import DeadLetter, ErrorClass, Processed, WebhookEvent
from wa_worker.operators.backoff import BackoffPolicy
from wa_worker.operators.conversation import ConversationLogic, ConversationPolicy
from wa_worker.operators.deadlines import DeadlinePolicy, policy_from
from wa_worker.operators.parse import parse_record
from wa_worker.settings import load_settings
from wa_worker.sinks.records import processed_record

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def message_at(at: datetime, wamid: str = "wamid.d1") -> WebhookEvent:
    message = {**text_message(wamid, "3161"), "timestamp": str(int(at.timestamp()))}
    (event,) = parse_record(envelope("w1", payload(messages_value(messages=[message]))), None)
    assert isinstance(event, WebhookEvent)
    return event


def status_at(at: datetime) -> WebhookEvent:
    st = {**status("wamid.s1", "3161"), "timestamp": str(int(at.timestamp()))}
    (event,) = parse_record(envelope("w1", payload(messages_value(statuses=[st]))), None)
    assert isinstance(event, WebhookEvent)
    return event


def make(deadlines: DeadlinePolicy, max_retries: int = 10):
    submit, clock = FakeSubmitter(), Clock()
    clock.now = NOW
    policy = ConversationPolicy(
        BackoffPolicy(1000, 60_000, 0.0, max_retries), 30_000, 10.0, deadlines=deadlines
    )
    logic = ConversationLogic(lambda e: e.conversation_key, submit, policy, None, clock)
    return logic, submit, clock


def fail(logic: ConversationLogic, key: str, token: str) -> list[object]:
    out, _ = logic.on_batch([HandleResult(key, token, HandleStatus.TRANSIENT, error="HTTP 503")])
    return list(out)


def test_a_message_is_not_retried_past_its_24_hour_window() -> None:
    logic, submit, clock = make(policy_from(None, None, False))
    event = message_at(NOW - timedelta(hours=24) + timedelta(seconds=2.5))
    logic.on_batch([event])
    token = submit.claims[0][1]
    logic.on_batch([claimed(event.event_key, token)])
    assert fail(logic, event.event_key, token) == []  # the 1 s retry is inside the window
    clock.now = logic.notify_at() or clock.now
    logic.on_notify()
    (letter,) = fail(logic, event.event_key, token)  # the 2 s one would not be
    assert isinstance(letter, DeadLetter)
    assert letter.error_class is ErrorClass.DEADLINE_EXCEEDED and letter.attempts == 2
    assert "24-hour customer-service window" in letter.reason and "HTTP 503" in letter.reason
    assert len(submit.handles) == 2


def test_a_status_has_no_deadline_unless_retry_deadline_s_is_set() -> None:
    old = NOW - timedelta(days=3)
    logic, submit, _ = make(policy_from(None, None, False))
    event = status_at(old)
    logic.on_batch([event])
    token = submit.claims[0][1]
    logic.on_batch([claimed(event.event_key, token)])
    assert fail(logic, event.event_key, token) == []  # retried: MAX_RETRIES bounds it

    logic, submit, _ = make(policy_from(3600.0, None, False))
    logic.on_batch([event])
    token = submit.claims[0][1]
    logic.on_batch([claimed(event.event_key, token)])
    (letter,) = fail(logic, event.event_key, token)
    assert isinstance(letter, DeadLetter) and letter.error_class is ErrorClass.DEADLINE_EXCEEDED
    assert "RETRY_DEADLINE_S" in letter.reason


def test_a_retry_counted_by_an_earlier_run_is_not_made_past_the_deadline() -> None:
    """After a restart the claim brings back the attempts already made: the next call is a
    retry, and it is not made past the deadline (the first call of an old event still is)."""
    logic, submit, _ = make(policy_from(60.0, None, False))
    event = message_at(NOW - timedelta(minutes=5))
    logic.on_batch([event])
    token = submit.claims[0][1]
    out, _ = logic.on_batch([claimed(event.event_key, token, attempts=1)])
    (letter,) = out
    assert isinstance(letter, DeadLetter) and letter.error_class is ErrorClass.DEADLINE_EXCEEDED
    assert submit.handles == []

    logic, submit, _ = make(policy_from(60.0, None, False))
    logic.on_batch([event])
    logic.on_batch([claimed(event.event_key, submit.claims[0][1])])
    assert len(submit.handles) == 1  # a first attempt is never refused


def test_old_events_are_marked_stale_and_the_handler_is_told() -> None:
    logic, submit, _ = make(policy_from(None, 600.0, False))
    fresh, old = message_at(NOW, "wamid.fresh"), message_at(NOW - timedelta(hours=1), "wamid.old")
    logic.on_batch([fresh])
    token = submit.claims[0][1]
    logic.on_batch([claimed("wamid.fresh", token)])
    (done,), _ = logic.on_batch([HandleResult("wamid.fresh", token, HandleStatus.OK)])
    assert isinstance(done, Processed) and not done.event.stale
    logic.on_batch([old])
    token = submit.claims[1][1]
    logic.on_batch([claimed("wamid.old", token)])
    assert submit.handles[-1][0] == "wamid.old"
    (done,), _ = logic.on_batch([HandleResult("wamid.old", token, HandleStatus.OK)])
    assert isinstance(done, Processed) and done.event.stale and done.skipped is None
    assert done.event.for_handler()["stale"] is True


def test_stale_events_skip_writes_a_processed_record_without_a_call() -> None:
    logic, submit, _ = make(policy_from(None, 600.0, True))
    old = message_at(NOW - timedelta(hours=1), "wamid.old")
    logic.on_batch([old])
    token = submit.claims[0][1]
    out, idle = logic.on_batch([claimed("wamid.old", token)])  # claimed: not a duplicate
    (done,) = out
    assert isinstance(done, Processed) and done.skipped == "stale" and idle
    assert submit.handles == []
    record = json.loads(processed_record(done, "processed").value)
    assert (record["stale"], record["skipped"], record["attempts"]) == (True, "stale", 0)


def test_processed_records_carry_the_events_own_time_and_age() -> None:
    at = NOW - timedelta(seconds=90)
    done = Processed(event=message_at(at), attempts=1, handled_at=NOW)
    record = json.loads(processed_record(done, "processed").value)
    assert record["event_time"] == int(at.timestamp())
    assert record["event_age_s"] == 90.0
    assert (record["stale"], record["skipped"]) == (False, None)


def test_deadline_settings_are_validated_with_their_names() -> None:
    for name, bad in (
        ("retry_deadline_s", "0"),
        ("max_event_age_s", "-1"),
        ("stale_events", "drop"),
    ):
        with pytest.raises(ConfigError, match=name.upper()):
            load_settings(**{name: bad})
    settings = load_settings(retry_deadline_s="", max_event_age_s="3600", stale_events="skip")
    assert settings.retry_deadline_s is None and settings.max_event_age_s == 3600.0
