"""The spans themselves, on the OpenTelemetry SDK (imported only when tracing is on; see
wa_worker/core/tracing.py for what is traced and why)."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from wa_worker.core.tracing import Written
from wa_worker.models.headers import TRACEPARENT, TRACESTATE, trace_headers, trace_of
from wa_worker.models.records import WebhookEvent

T = TypeVar("T")
_PROPAGATOR = TraceContextTextMapPropagator()
# Event spans open in this process: beyond this many (events never finished here, e.g. left
# in a snapshot at a drain), the oldest are closed as `unfinished` so memory stays bounded.
MAX_OPEN_EVENTS = 100_000


def provider(service_name: str, exporters: Sequence[str]) -> TracerProvider:
    """The SDK configured by the OTEL_* variables: resource (OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES), sampler (OTEL_TRACES_SAMPLER), batching (OTEL_BSP_*) and the
    OTLP/HTTP exporter's endpoint, headers, timeout and compression."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    made = TracerProvider(resource=resource)
    for name in exporters:
        made.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return made


def make_global(made: TracerProvider) -> None:
    trace.set_tracer_provider(made)


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _context(traceparent: str | None, tracestate: str | None) -> Context:
    """The parent context a traceparent names; an empty one (a new root) when it is missing
    or malformed (bad input starts a trace of its own, never an error)."""
    if not traceparent:
        return Context()
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    return _PROPAGATOR.extract(carrier, context=Context())


def _carrier(span: Span) -> dict[str, str]:
    """The span's W3C headers, written directly (the propagator's way costs several context
    look-ups per event)."""
    ctx = span.get_span_context()
    carrier = {TRACEPARENT: f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
    if ctx.trace_state:
        carrier[TRACESTATE] = ctx.trace_state.to_header()
    return carrier


def _envelope_context(headers: Mapping[str, Any]) -> tuple[str | None, str | None]:
    found: dict[str, str] = {}
    for key, value in headers.items():
        lowered = key.lower()
        if lowered in (TRACEPARENT, TRACESTATE):
            found[lowered] = str(value[0] if isinstance(value, list) and value else value)
    return found.get(TRACEPARENT), found.get(TRACESTATE)


@dataclass
class IngressTrace:
    span: Span
    # For the inbound record (typed as confluent-kafka takes headers).
    headers: list[tuple[str, str | bytes | None]] = field(default_factory=list)

    def answered(self, status: int) -> None:
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))


class Tracing:
    def __init__(self, provider: TracerProvider) -> None:
        self._tracer = provider.get_tracer("wa_worker")
        self._lock = threading.Lock()  # Bytewax workers of one process share the open spans
        self._open: dict[str, Span] = {}  # event key → its event span

    def traced_parse(self, parse: Callable[[list[Any]], list[T]]) -> Callable[[list[Any]], list[T]]:
        def traced(batch: list[Any]) -> list[T]:
            out: list[T] = []
            for msg in batch:
                parsed = parse([msg])
                parent, state = trace_of(msg.headers)
                if parent is not None:
                    update = {"traceparent": parent, "tracestate": state}
                    parsed = [
                        p.model_copy(update=update) if isinstance(p, WebhookEvent) else p
                        for p in parsed
                    ]
                out.extend(parsed)
            return out

        return traced

    def start_event(self, event: WebhookEvent, resumed: bool) -> WebhookEvent:
        parent, state = event.traceparent, event.tracestate
        if parent is None:
            parent, state = _envelope_context(event.envelope_headers)
        span = self._tracer.start_span(
            "event",
            context=_context(parent, state),
            kind=SpanKind.CONSUMER,
            # Few attributes: the SDK checks each one, most of a span's cost.
            attributes={"wa.event_key": event.event_key, "wa.event_kind": event.kind.value},
        )
        if resumed:
            span.set_attribute("wa.resumed", True)
        evicted: list[Span] = []
        with self._lock:
            if (old := self._open.pop(event.event_key, None)) is not None:
                evicted.append(old)
            self._open[event.event_key] = span
            while len(self._open) > MAX_OPEN_EVENTS:
                evicted.append(self._open.pop(next(iter(self._open))))
        for old in evicted:
            _finish(old, "unfinished")
        carrier = _carrier(span)
        return event.model_copy(
            update={"traceparent": carrier[TRACEPARENT], "tracestate": carrier.get(TRACESTATE)}
        )

    def end_event(self, event_key: str, outcome: str, end_ns: int | None = None) -> None:
        with self._lock:
            span = self._open.pop(event_key, None)
        if span is not None:
            _finish(span, outcome, end_ns)

    def redis_batch(
        self,
        claims: Sequence[str],
        started_ns: int,
        records: int,
        dones: int,
        error: str | None,
    ) -> None:
        ended = time.time_ns()
        with self._lock:
            spans = [self._open.get(key) for key in claims]
        batch = self._tracer.start_span(
            "redis batch",
            context=Context(),
            kind=SpanKind.CLIENT,
            start_time=started_ns,
            links=[Link(s.get_span_context()) for s in spans if s is not None],
            attributes={
                "db.system.name": "redis",
                "wa.claims": len(claims),
                "wa.attempt_records": records,
                "wa.done_marks": dones,
            },
        )
        if error is not None:
            batch.set_status(Status(StatusCode.ERROR, error[:200]))
        batch.end(ended)

    async def handler_call(
        self, handler: Callable[[WebhookEvent], Awaitable[T]], event: WebhookEvent
    ) -> T:
        parent = _context(event.traceparent, event.tracestate)
        with self._tracer.start_as_current_span(
            "handler",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={"wa.event_key": event.event_key},
        ) as span:
            try:
                return await handler(event)
            except Exception as exc:
                if (code := getattr(exc, "status_code", None)) is not None:
                    span.set_attribute("http.response.status_code", code)
                raise

    def inject(self, headers: dict[str, str]) -> None:
        _PROPAGATOR.inject(headers)

    def written(self, records: Sequence[Written], span_name: str, started_ns: int) -> None:
        ended = time.time_ns()
        for record in records:
            with self._lock:
                event = self._open.pop(record.done[0], None) if record.done else None
            if event is not None:
                parent = trace.set_span_in_context(event, Context())
            else:  # its event span is not open here (a resumed event's record, say)
                traceparent, tracestate = trace_of(record.headers)
                if traceparent is None:
                    continue
                parent = _context(traceparent, tracestate)
            span = self._tracer.start_span(
                span_name,
                context=parent,
                kind=SpanKind.PRODUCER,
                start_time=started_ns,
                attributes={"messaging.destination.name": record.topic},
            )
            span.end(ended)
            if event is not None and record.done is not None:
                _finish(event, record.done[1], ended)

    @contextmanager
    def ingress_request(self, headers: Mapping[str, str], name: str) -> Iterator[IngressTrace]:
        parent = _context(headers.get(TRACEPARENT), headers.get(TRACESTATE))
        with self._tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as span:
            carrier = _carrier(span)
            record_headers = trace_headers(carrier[TRACEPARENT], carrier.get(TRACESTATE))
            yield IngressTrace(span, list[tuple[str, str | bytes | None]](record_headers))


def _finish(span: Span, outcome: str, end_ns: int | None = None) -> None:
    span.set_attribute("wa.outcome", outcome)
    if outcome not in ("processed", "duplicate"):
        span.set_status(Status(StatusCode.ERROR, outcome))
    span.end(end_ns)
