"""Distributed traces (README "Traces"): the trace context a webhook comes with reaches the
handler and the outcome records, the spans are exported over OTLP/HTTP, and nothing of it
runs unless the OTEL_* variables ask for it."""

from __future__ import annotations

import json
import pickle
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devtools.handler_server import HandlerServer, Reply, always_ok
from devtools.ingress import IngressProcess, sign
from devtools.kafka import read_topic
from devtools.otlp_receiver import OtlpReceiver
from devtools.webhooks import envelope, messages_value, payload, text_message
from devtools.worker import WorkerProcess
from tests.conftest import Stack, Topics
from tests.test_replay import closed_port, read_records
from wa_worker.cli.replay import choose_dedupe, replay_file
from wa_worker.core import tracing
from wa_worker.errors import ConfigError
from wa_worker.models.capture_file import record_line
from wa_worker.models.headers import trace_of
from wa_worker.settings import load_settings

KAFKA_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ENVELOPE_TRACE = "0af7651916cd43dd8448eb211c80319c"


def traceparent(trace_id: str, span_id: str = "00f067aa0ba902b7") -> str:
    return f"00-{trace_id}-{span_id}-01"


def _webhook(webhook_id: str, wamid: str, headers: dict[str, Any] | None = None) -> bytes:
    wa_id = f"3161{abs(hash(wamid)) % 10**6:06d}"
    value = messages_value(messages=[text_message(wamid, wa_id)], wa_id=wa_id)
    return envelope(webhook_id, payload(value), headers=headers)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.uninstall()
    provider.shutdown()


def _replay(
    tmp_path: Path, stack: Stack, redis_prefix: str, handler: HandlerServer, lines: list[bytes]
) -> tuple[dict[str, str], dict[str, str]]:
    """Replay `lines` in this process; (event key → traceparent header) of processed.jsonl
    and of dlq.jsonl."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    settings = load_settings(
        redis_url=stack.redis_url,
        redis_key_prefix=redis_prefix,
        handler_url=handler.url,
        kafka_brokers=f"127.0.0.1:{closed_port()}",
        retry_delay_ms=100,
        max_retries=2,
    )
    dedupe = choose_dedupe(settings, in_memory=False, prefix=redis_prefix)
    assert dedupe.durable, dedupe.note  # the real Redis
    replay_file(path, tmp_path / "out", settings, dedupe)

    def headers(name: str) -> dict[str, str]:
        records = read_records(tmp_path / "out" / name)
        return {r.headers["wa-event-key"]: r.headers.get("traceparent", "") for r in records}

    return headers("processed.jsonl"), headers("dlq.jsonl")


def _by_name(finished: tuple[ReadableSpan, ...], trace_id: str) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        if span.context is not None and f"{span.context.trace_id:032x}" == trace_id:
            out.setdefault(span.name, []).append(span)
    return out


def _ids(header: str) -> tuple[str, str]:
    """(trace id, span id) of a traceparent."""
    _, trace_id, span_id, _ = header.split("-")
    return trace_id, span_id


def test_a_webhooks_trace_context_reaches_the_handler_and_the_outcome_records(
    tmp_path: Path, stack: Stack, redis_prefix: str, spans: InMemorySpanExporter
) -> None:
    def plan(event: dict[str, Any], attempt: int) -> Reply:
        if event["event_key"] == "wamid.rejected":
            return Reply(400, {"error": "no"})
        return always_ok(event, attempt)

    lines = [
        # A captured Kafka record whose header holds the context (what the ingress writes).
        record_line(
            b"w-kafka",
            _webhook("w-kafka", "wamid.kafka"),
            (("traceparent", traceparent(KAFKA_TRACE).encode()),),
        ),
        # Only the envelope's headers have it (what the edge received).
        _webhook("w-env", "wamid.envelope", {"traceparent": traceparent(ENVELOPE_TRACE)}),
        _webhook("w-none", "wamid.none"),  # no context: a new root
        _webhook("w-rejected", "wamid.rejected"),
    ]
    with HandlerServer(plan) as handler:
        processed, dlq = _replay(tmp_path, stack, redis_prefix, handler, lines)
    finished = spans.get_finished_spans()
    seen = {c.event_key: c.traceparent or "" for c in handler.calls}

    for wamid, trace_id in (("wamid.kafka", KAFKA_TRACE), ("wamid.envelope", ENVELOPE_TRACE)):
        named = _by_name(finished, trace_id)
        assert {"event", "handler", "write"} <= set(named), (wamid, sorted(named))
        (event,) = named["event"]
        (call,) = named["handler"]
        # The event span hangs under the webhook's span; the others under the event span.
        assert event.parent is not None and f"{event.parent.span_id:016x}" == "00f067aa0ba902b7"
        event_span_id = f"{event.context.span_id:016x}"
        for child in (call, *named["write"]):
            assert child.parent is not None and f"{child.parent.span_id:016x}" == event_span_id
        assert event.attributes is not None and event.attributes["wa.outcome"] == "processed"
        # The handler saw the trace (its span's context), the processed record the event's.
        assert _ids(seen[wamid]) == (trace_id, f"{call.context.span_id:016x}")
        assert _ids(processed[wamid]) == (trace_id, event_span_id)

    # No context: the event span is a root, and its trace still reaches handler and record.
    root_trace, _ = _ids(processed["wamid.none"])
    assert root_trace not in (KAFKA_TRACE, ENVELOPE_TRACE)
    assert _ids(seen["wamid.none"])[0] == root_trace
    (root,) = _by_name(finished, root_trace)["event"]
    assert root.parent is None

    # A dead letter carries its event span's traceparent too, and that span says why.
    rejected_trace, rejected_span = _ids(dlq["wamid.rejected"])
    (rejected,) = _by_name(finished, rejected_trace)["event"]
    assert f"{rejected.context.span_id:016x}" == rejected_span
    assert rejected.attributes is not None and rejected.attributes["wa.outcome"] == "dlq"

    # The Redis round trips: batch spans linked to the event spans they claimed.
    batches = [s for s in finished if s.name == "redis batch"]
    linked = {f"{link.context.span_id:016x}" for b in batches for link in b.links}
    assert _ids(processed["wamid.kafka"])[1] in linked
    assert {_ids(processed[k])[1] for k in processed} <= linked


def test_traces_are_off_by_default(tmp_path: Path, stack: Stack, redis_prefix: str) -> None:
    assert tracing.configure_from_env("wa-worker", {}) is False
    assert tracing.configure_from_env("wa-worker", {"OTEL_TRACES_EXPORTER": "none"}) is False
    disabled = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
    assert tracing.configure_from_env("wa-worker", disabled) is False
    assert not tracing.ENABLED
    context = (("traceparent", traceparent(KAFKA_TRACE).encode()),)
    lines = [record_line(b"w1", _webhook("w1", "wamid.off"), context)]
    with HandlerServer() as handler:
        processed, _ = _replay(tmp_path, stack, redis_prefix, handler, lines)
    assert processed == {"wamid.off": ""}  # no traceparent header written
    assert [c.traceparent for c in handler.calls] == [None]
    assert not [t.name for t in threading.enumerate() if "Span" in t.name or "Otel" in t.name]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    ],
)
def test_a_bad_otel_setting_is_refused_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"^{named}: "):
        tracing.configure_from_env("wa-worker", env)
    assert not tracing.ENABLED


def _ingress_env(stack: Stack, topics: Topics, receiver: OtlpReceiver) -> dict[str, str]:
    return {
        "KAFKA_BROKERS": stack.brokers,
        **topics.env(),
        "WA_APP_SECRET": "tracing-test-secret",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


def test_one_trace_from_the_ingress_through_the_worker_exported_over_otlp(
    tmp_path: Path,
    stack: Stack,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Meta sends no context: the ingress's request span is the root, its traceparent goes
    on the inbound record, and the worker's spans, the handler's request and the processed
    record all carry that trace. Both processes export to a local OTLP/HTTP receiver."""
    with OtlpReceiver() as receiver, HandlerServer() as handler:
        env = _ingress_env(stack, topics, receiver)
        ingress = IngressProcess({**env, "OTEL_SERVICE_NAME": "test-ingress"}, tmp_path / "in.log")
        ingress.start()
        try:
            body = json.dumps(
                payload(messages_value(messages=[text_message("wamid.t1", "31600001")]))
            ).encode()
            answer = httpx.post(
                ingress.url + "/webhook",
                content=body,
                headers={"X-Hub-Signature-256": sign(body, b"tracing-test-secret")},
            )
            assert answer.status_code == 200, answer.text
        finally:
            ingress.send()
            ingress.wait()
        inbound = read_topic(stack.brokers, topics.inbound, until=lambda rs: len(rs) >= 1)
        trace_id, ingress_span = _ids(inbound[0].header("traceparent") or "-")

        worker = start_worker(
            HANDLER_URL=handler.url,
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_SERVICE_NAME="test-worker",
        )
        processed = read_topic(stack.brokers, topics.processed, until=lambda rs: len(rs) >= 1)
        assert worker.running(), worker.log()[-3000:]
        assert _ids(processed[0].header("traceparent") or "-")[0] == trace_id
        assert [_ids(c.traceparent or "-")[0] for c in handler.calls] == [trace_id]

        wanted = {"POST /webhook", "event", "handler", "produce"}

        def complete(received: list[Any]) -> bool:
            return wanted <= {s.name for s in received if s.trace_id == trace_id}

        received = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
        assert wanted <= {s.name for s in received}, (worker.log()[-3000:], received)
    by_name = {s.name: s for s in received}
    root = by_name["POST /webhook"]
    assert (root.parent_span_id, root.span_id, root.service) == ("", ingress_span, "test-ingress")
    event = by_name["event"]
    assert (event.parent_span_id, event.service) == (ingress_span, "test-worker")
    for name in ("handler", "produce"):
        assert by_name[name].parent_span_id == event.span_id, name

    def claimed(s: Any) -> bool:
        return bool(s.name == "redis batch" and event.span_id in s.links)

    batches = [s for s in receiver.wait_for(lambda r: any(map(claimed, r))) if claimed(s)]
    assert batches and all(b.parent_span_id == "" for b in batches)  # linked, not a child
    assert _ids(processed[0].header("traceparent") or "-")[1] == event.span_id
    print(
        "\none webhook's trace: "
        + ", ".join(f"{s.name} {s.duration_ms:.1f} ms" for s in sorted(received, key=_start))
        + f"; linked redis batch {batches[0].duration_ms:.1f} ms"
    )


def _start(span: Any) -> int:
    return int(span.start_ns)


def test_the_ingress_keeps_a_context_meta_sends(
    tmp_path: Path, stack: Stack, topics: Topics
) -> None:
    with OtlpReceiver() as receiver:
        ingress = IngressProcess(_ingress_env(stack, topics, receiver), tmp_path / "in.log")
        ingress.start()
        try:
            body = b'{"object": "whatsapp_business_account", "entry": []}'
            answer = httpx.post(
                ingress.url + "/webhook",
                content=body,
                headers={
                    "X-Hub-Signature-256": sign(body, b"tracing-test-secret"),
                    "traceparent": traceparent(KAFKA_TRACE),
                },
            )
            assert answer.status_code == 200, answer.text
        finally:
            ingress.send()
            ingress.wait()
        (record,) = read_topic(stack.brokers, topics.inbound, until=lambda rs: len(rs) >= 1)
        parent, _ = trace_of(list(record.headers.items()))
        assert parent is not None and _ids(parent)[0] == KAFKA_TRACE
        # The envelope keeps what the edge received, as the worker's fallback.
        assert json.loads(record.value)["headers"]["traceparent"] == traceparent(KAFKA_TRACE)
        (span,) = receiver.wait_for(lambda r: bool(r))
    assert (span.trace_id, span.parent_span_id) == (KAFKA_TRACE, "00f067aa0ba902b7")
    assert span.attributes["http.response.status_code"] == 200


def test_the_trace_context_survives_a_snapshot_and_a_duplicate_closes_its_span(
    spans: InMemorySpanExporter,
) -> None:
    """The event carries its span's context as strings: pickled into a snapshot and resumed,
    the new process's `event` span continues the same trace under the lost span."""
    from tests.test_conversation import claimed, events, make
    from wa_worker.models.completions import ClaimResult, ClaimStatus

    logic, submit, clock = make()
    (a,) = events("wamid.a")
    logic.on_batch([a.model_copy(update={"traceparent": traceparent(KAFKA_TRACE)})])
    token = submit.claims[0][1]
    logic.on_batch([claimed("wamid.a", token)])
    state = pickle.loads(pickle.dumps(logic.snapshot()))
    first = state.queue[0].event.traceparent
    assert first is not None and _ids(first)[0] == KAFKA_TRACE

    resumed, submit2, _ = make(resume=state, clock=clock)
    again = resumed.snapshot().queue[0].event.traceparent
    assert again is not None and _ids(again)[0] == KAFKA_TRACE and again != first
    resumed.on_notify()
    resumed.on_batch([ClaimResult("wamid.a", submit2.claims[0][1], ClaimStatus.DONE)])
    # (In one process, the first logic's span is closed too, as `unfinished`, when the resumed
    # event takes its place.)
    outcomes = {s.attributes["wa.outcome"]: s for s in spans.get_finished_spans() if s.attributes}
    assert set(outcomes) == {"unfinished", "duplicate"}
    ended = outcomes["duplicate"]
    assert ended.attributes is not None and ended.attributes["wa.resumed"] is True
    assert ended.parent is not None and f"{ended.parent.span_id:016x}" == _ids(first)[1]
