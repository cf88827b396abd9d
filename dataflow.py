"""wa-worker's dataflow. Run with `wa-worker run` (= `python -m bytewax.run dataflow -r …`).

Kafka inbound ─→ parse & split ─┬─→ events ─→ key by conversation ─┐
                                │                 completions ─────┴─→ claim · handle · retry
                                │                                                │
                                └─→ dead letters (bad input) ──────────────┬─────┘ outcomes
                                                                           ↓
                                                    processed topic  |  DLQ topic (+ mark done)
"""

from __future__ import annotations

from typing import cast

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError
from bytewax.dataflow import Dataflow, Stream

from operators.completions import CompletionSource
from operators.conversation import conversation_builder, route_key
from operators.inbound import consumer_error, inbound_source, is_message
from operators.parse import is_event, parse_batch
from sinks.kafka_sink import KafkaOutcomeSink
from sinks.records import Topics, to_record
from wa_worker.backlog import BACKLOG
from wa_worker.breaker import BREAKER
from wa_worker.models.records import DeadLetter
from wa_worker.runtime import IoRuntime
from wa_worker.settings import load_settings_or_exit
from wa_worker.shutdown import DRAIN
from wa_worker.startup import require_kafka_topics, start_process

settings = load_settings_or_exit()
require_kafka_topics(settings)
start_process(settings, paused_reason=lambda: "draining" if DRAIN.draining else BREAKER.reason())


def runtime() -> IoRuntime:
    return IoRuntime.instance(settings)


secret = settings.wa_app_secret.get_secret_value().encode() if settings.wa_app_secret else None
topics = Topics(
    settings.kafka_processed_topic, settings.kafka_dlq_topic, settings.kafka_inbound_topic
)

flow = Dataflow("wa-worker")

# Input stops during a drain, while the handler's circuit is open, and while the process
# holds MAX_EVENTS_IN_PROGRESS unfinished events.
BACKLOG.configure(settings.max_events_in_progress)
inbound = op.input(
    "inbound",
    flow,
    inbound_source(settings, DRAIN, hold=lambda: BREAKER.is_open() or BACKLOG.full()),
)
readable = op.branch("readable", inbound, is_message)
unreadable = op.flat_map(
    "consumer-errors",
    cast(Stream[KafkaError[bytes | None, bytes | None]], readable.falses),
    consumer_error,
)

parsed = op.flat_map_batch("parse", readable.trues, parse_batch(secret))
split = op.branch("valid", parsed, is_event)
invalid = cast(Stream[DeadLetter], split.falses)  # parse yields events or dead letters

by_conversation = op.key_on("by-conversation", split.trues, route_key(settings.handler_ordered))
completions = op.input("completions", flow, CompletionSource(runtime, DRAIN))
handled = op.stateful_batch(
    "handle",
    op.merge("events-and-results", by_conversation, completions),
    conversation_builder(
        settings, runtime, paused=lambda: DRAIN.draining, handler_gate=BREAKER, backlog=BACKLOG
    ),
)

outcomes = op.merge("outcomes", op.key_rm("unkey", handled), invalid, unreadable)
records = op.map("to-records", outcomes, lambda outcome: to_record(outcome, topics))
op.output(
    "kafka-out",
    records,
    KafkaOutcomeSink(settings.producer_config(), runtime, settings.kafka_flush_timeout_s),
)
