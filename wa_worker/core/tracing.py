"""Distributed traces (OpenTelemetry, W3C trace context): off unless the standard `OTEL_*`
variables turn them on (README "Traces").

Off, nothing here builds a span or imports OpenTelemetry: the hot path reads `ENABLED` and
skips. On (`OTEL_TRACES_EXPORTER=otlp`, OTLP/HTTP), `wa_worker.core.tracing_otel` makes the
spans. Across Bytewax steps the context travels in the event as its `traceparent` string
(it pickles into recovery snapshots); the live span objects stay in this process.

Spans: `event` per event (queued → outcome written), with children `handler` (each call; the
HTTP handler's request carries its `traceparent`) and `produce` (`write` in a replay); one
`redis batch` per Redis round trip, linked to the events it claimed (a child span per claim
would cost as much as the event's own span).
Their parent is the inbound record's `traceparent` header, else the envelope's (what the
edge received), else none: a new root. `wa-worker ingress` opens the root when Meta sends
no context, and puts its `traceparent` on the inbound record.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dotenv import dotenv_values

from wa_worker.errors import ConfigError
from wa_worker.models.records import WebhookEvent

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from wa_worker.core.tracing_otel import IngressTrace, Tracing

# Read once per batch or call by the hot path; set only by `install` at start-up.
ENABLED = False
_impl: Tracing | None = None

EXPORTERS = frozenset({"otlp", "console"})
T = TypeVar("T")


class _Message(Protocol):
    @property
    def headers(self) -> Sequence[tuple[str, bytes]] | None: ...


class Written(Protocol):
    """An outcome record a sink wrote (sinks.records.KafkaRecord)."""

    @property
    def topic(self) -> str: ...
    @property
    def headers(self) -> list[tuple[str, bytes]]: ...
    @property
    def done(self) -> tuple[str, str] | None: ...


def configure_from_env(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on when the `OTEL_*` variables ask for it; True if on. Raises ConfigError
    naming the variable that is wrong. `environ`: the process's environment, with `.env`'s
    OTEL_* lines under it (copied into it: the SDK reads only the environment)."""
    if environ is None:
        for name, value in dotenv_values(".env").items():
            if name.startswith("OTEL_") and value is not None:
                os.environ.setdefault(name, value)
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = {n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",")}
    names -= {"", "none"}
    if not names:
        return False
    if unknown := names - EXPORTERS:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: {', '.join(sorted(unknown))} is not supported "
            "(otlp, console or none)"
        )
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if (protocol := env.get(name)) and protocol.strip() != "http/protobuf":
            raise ConfigError(f"{name}: {protocol!r}: only http/protobuf is supported")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if (url := env.get(name)) and not url.strip().startswith(("http://", "https://")):
            raise ConfigError(f"{name}: {url!r} is not an http:// or https:// URL")
    try:
        from wa_worker.core import tracing_otel
    except ImportError as exc:
        raise ConfigError(
            "OTEL_TRACES_EXPORTER: traces need the optional packages: "
            f"pip install 'wa-worker[tracing]' ({exc})"
        ) from None
    made = tracing_otel.provider(service_name, sorted(names))
    install(made)
    tracing_otel.make_global(made)  # a handler callable's own spans join the same export
    return True


def install(provider: TracerProvider) -> None:
    """Trace with `provider` (tests give one with an in-memory exporter)."""
    global ENABLED, _impl
    from wa_worker.core.tracing_otel import Tracing

    _impl = Tracing(provider)
    ENABLED = True


def uninstall() -> None:
    """Tracing off again (tests); the provider is the caller's to shut down."""
    global ENABLED, _impl
    ENABLED, _impl = False, None


def _tracing() -> Tracing:
    if _impl is None:
        raise RuntimeError("tracing is not installed")
    return _impl


# The steps call these only when ENABLED.


def traced_parse(parse: Callable[[list[Any]], list[T]]) -> Callable[[list[Any]], list[T]]:
    """The parse step, with each record's `traceparent` header put on its events."""
    return _tracing().traced_parse(parse)


def start_event(event: WebhookEvent, resumed: bool = False) -> WebhookEvent:
    """Open the event's span; the event, carrying that span's context."""
    return _tracing().start_event(event, resumed)


def end_event(event_key: str, outcome: str) -> None:
    """Close an event's span that ends without a record (a duplicate)."""
    _tracing().end_event(event_key, outcome)


def redis_batch(
    claims: Sequence[str], started_ns: int, records: int, dones: int, error: str | None
) -> None:
    """One Redis round trip: `claims`, the event keys claimed (its span links to theirs)."""
    _tracing().redis_batch(claims, started_ns, records, dones, error)


def handler_call(handler: Callable[[WebhookEvent], Awaitable[T]], event: WebhookEvent) -> Any:
    """The handler's call (an awaitable) inside the event's `handler` span."""
    return _tracing().handler_call(handler, event)


def inject(headers: dict[str, str]) -> None:
    """Add the current span's `traceparent` (and `tracestate`) to outgoing HTTP headers."""
    _tracing().inject(headers)


def written(records: Sequence[Written], span_name: str, started_ns: int) -> None:
    """Records a sink wrote since `started_ns`: a `span_name` span each, and their events'
    spans closed."""
    _tracing().written(records, span_name, started_ns)


def ingress_request(headers: Mapping[str, str], name: str) -> AbstractContextManager[IngressTrace]:
    """The ingress's request span (a root unless the request carries a context)."""
    return _tracing().ingress_request(headers, name)
