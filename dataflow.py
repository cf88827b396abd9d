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
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

from operators.completions import CompletionSource
from operators.conversation import conversation_builder, route_key
from operators.inbound import InboundSource, consumer_error, is_message
from operators.parse import is_event, parse_batch
from sinks.kafka_sink import KafkaOutcomeSink
from sinks.records import Topics, to_record
from wa_worker.breaker import BREAKER
from wa_worker.models.records import DeadLetter
from wa_worker.offsets import POSITIONS
from wa_worker.runtime import IoRuntime
from wa_worker.settings import StartOffset, load_settings_or_exit
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

inbound = op.input(
    "inbound",
    flow,
    InboundSource(
        book=POSITIONS,
        drain=DRAIN,
        hold=BREAKER.is_open,
        admin_config=settings.admin_config(),
        brokers=settings.broker_list,
        topics=[settings.kafka_inbound_topic],
        starting_offset=OFFSET_BEGINNING
        if settings.kafka_start_offset is StartOffset.EARLIEST
        else OFFSET_END,
        add_config=settings.consumer_config(),
        batch_size=settings.kafka_batch_size,
        raise_on_errors=False,
    ),
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
    conversation_builder(settings, runtime, paused=lambda: DRAIN.draining, handler_gate=BREAKER),
)

outcomes = op.merge("outcomes", op.key_rm("unkey", handled), invalid, unreadable)
records = op.map("to-records", outcomes, lambda outcome: to_record(outcome, topics))
op.output(
    "kafka-out",
    records,
    KafkaOutcomeSink(settings.producer_config(), runtime, settings.kafka_flush_timeout_s),
)
