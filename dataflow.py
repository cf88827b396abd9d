"""wa-worker's dataflow, and its composition root. Run with `wa-worker run`
(= `python -m bytewax.run wa_worker.dataflow -r …`; `python -m bytewax.run dataflow` from a
checkout).

Kafka inbound ─→ parse & split ─┬─→ events ─→ reorder window ─→ claim early ─┐
                                │                      completions ────────┴─→ claim · handle
                                │                                                  · retry │
                                └─→ dead letters (bad input) ──────────────────┬───────────┘
                                                                               ↓ outcomes
                                                     processed topic  |  DLQ topic (+ mark done)

`build` wires the steps between a source and a sink; the worker gives it Kafka on both sides,
`wa-worker replay` a file (the same operators, offline). Importing this module has no side
effects: `flow`, the worker's dataflow, is made on first access (Bytewax reads it once), and
only then are settings loaded, Kafka checked, signal handlers and the health server installed.

Step ids are the ones the worker always had (tests/test_step_ids.py pins them): renaming one
would orphan recovered state.
"""

from __future__ import annotations

from typing import Any, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from wa_worker.core import tracing
from wa_worker.core.services import Services
from wa_worker.models.records import DeadLetter
from wa_worker.operators.completions import CompletionSource, EndSignal
from wa_worker.operators.conversation import conversation_builder, route_key
from wa_worker.operators.finish import FinishTracker
from wa_worker.operators.inbound import (
    InboundError,
    InboundItem,
    consumer_error,
    inbound_source,
    is_message,
)
from wa_worker.operators.parse import is_event, parse_batch
from wa_worker.operators.preclaim import pre_claim
from wa_worker.operators.window import shard_of, window_builder
from wa_worker.process.startup import (
    bytewax_process_count,
    bytewax_process_id,
    configure_tracing_or_exit,
    require_kafka_topics,
    require_working_redis,
    start_process,
)
from wa_worker.settings import Settings, load_settings_or_exit
from wa_worker.sinks.kafka_sink import KafkaOutcomeSink
from wa_worker.sinks.records import KafkaRecord, Topics, to_record


def build(
    flow_id: str,
    services: Services,
    source: Source[InboundItem],
    sink: tuple[str, Sink[tuple[str, KafkaRecord]]],
    finish: FinishTracker | None = None,
) -> Dataflow:
    """One output record (processed or dead letter) per inbound event or unusable record.

    `sink` is the output step's id and sink. `finish`: for a bounded input, counts what is
    still open so the run ends once every event has its outcome (else the drain ends it).
    """
    settings = services.settings
    flow = Dataflow(flow_id)
    inbound = op.input("inbound", flow, source)
    end: EndSignal = finish or services.drain
    completions = op.input("completions", flow, CompletionSource(services.runtime, end))

    # Consumer errors that carry a record become dead letters; the rest are logged.
    readable = op.branch("readable", inbound, is_message)
    unreadable = op.flat_map(
        "consumer-errors",
        cast(Stream[InboundError], readable.falses),
        consumer_error,
    )

    # Parse & split: each envelope into events, or a dead letter saying why not.
    parse = parse_batch(_app_secret(settings))
    if tracing.ENABLED:  # each record's trace context onto its events
        parse = tracing.traced_parse(parse)
    parsed = op.flat_map_batch(
        "parse", readable.trues, finish.counted_parse(parse) if finish else parse
    )
    split = op.branch("valid", parsed, is_event)
    invalid = cast(Stream[DeadLetter], split.falses)

    # Each conversation's events wait the reorder window, kept per shard of conversations,
    # and leave it in Meta's timestamp order (ordered handling only).
    events = split.trues
    route = route_key(settings.handler_ordered)
    if settings.handler_ordered and settings.reorder_window_ms:
        by_shard = op.key_on("by-shard", events, lambda event: shard_of(route(event)))
        window = window_builder(route, settings.reorder_window_ms, services.backlog)
        events = op.key_rm("unshard", op.stateful_batch("reorder-window", by_shard, window))

    # Per conversation: claim in Redis, call the handler, retry with backoff, in order.
    # The batch's events are claimed first, together: one round trip, not one per head.
    by_conversation = op.key_on("by-conversation", events, route)
    early = pre_claim(settings, services.runtime)
    claimed = op.flat_map_batch("claim-early", by_conversation, early)
    builder = conversation_builder(
        settings,
        services.runtime,
        paused=lambda: services.drain.draining,  # draining: conversations start no new work
        handler_gate=services.breaker,
        backlog=services.backlog,
    )
    handled = op.stateful_batch(
        "handle",
        op.merge("events-and-results", claimed, completions),
        finish.counted_logic(builder) if finish else builder,
    )

    # Outcomes: processed records and dead letters, checked to fit the producer's limit.
    outcomes = op.merge("outcomes", op.key_rm("unkey", handled), invalid, unreadable)
    topics = Topics(
        settings.kafka_processed_topic, settings.kafka_dlq_topic, settings.kafka_inbound_topic
    )
    max_bytes = settings.kafka_max_message_bytes
    # Keyed for the Kafka sink's partitions, whose routing ignores the key (kafka_sink.py).
    records = op.map("to-records", outcomes, lambda o: ("", to_record(o, topics, max_bytes)))
    op.output(sink[0], records, sink[1])
    return flow


def worker_flow() -> Dataflow:
    """The worker: Kafka in, Kafka out. Starts the process's services (signals, health,
    offset reporter) too, so it is called once, by Bytewax reading `flow`."""
    settings = load_settings_or_exit()
    configure_tracing_or_exit("wa-worker")
    require_kafka_topics(settings)
    require_working_redis(settings)
    services = Services.create(settings)
    start_process(settings, services)
    # Input waits during a drain, while the handler's circuit is open and while the process
    # holds MAX_EVENTS_IN_PROGRESS unfinished events.
    source = inbound_source(settings, services.drain, services.hold_input, services.positions)
    sink = KafkaOutcomeSink(
        settings.producer_config(),
        services.runtime,
        settings.kafka_flush_timeout_s,
        process_index=bytewax_process_id(),
        process_count=bytewax_process_count(),
    )
    return build("wa-worker", services, source, ("kafka-out", sink))


def _app_secret(settings: Settings) -> tuple[bytes, ...] | None:
    return settings.app_secrets() or None


def __getattr__(name: str) -> Any:
    if name == "flow":
        flow = globals()["flow"] = worker_flow()
        return flow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
