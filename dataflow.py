"""wa-worker's dataflow. Run with `wa-worker run` (= `python -m bytewax.run dataflow -r …`).

Kafka inbound ─→ parse & split ─┬─→ events ─→ key by conversation ─┐
                                │                 completions ─────┴─→ claim · handle · retry
                                │                                                │
                                └─→ dead letters (bad input) ──────────────┬─────┘ outcomes
                                                                           ↓
                                                    processed topic  |  DLQ topic (+ mark done)

The steps between the inputs and the output live in operators/pipeline.py, shared with
`wa-worker replay` (the same operators on a file, offline).
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from operators.completions import CompletionSource
from operators.inbound import inbound_source
from operators.pipeline import outcome_records
from sinks.kafka_sink import KafkaOutcomeSink
from wa_worker.backlog import BACKLOG
from wa_worker.breaker import BREAKER
from wa_worker.runtime import IoRuntime
from wa_worker.settings import load_settings_or_exit
from wa_worker.shutdown import DRAIN
from wa_worker.startup import require_kafka_topics, start_process

settings = load_settings_or_exit()
require_kafka_topics(settings)
start_process(settings, paused_reason=lambda: "draining" if DRAIN.draining else BREAKER.reason())


def runtime() -> IoRuntime:
    return IoRuntime.instance(settings)


flow = Dataflow("wa-worker")

# Input stops during a drain, while the handler's circuit is open, and while the process
# holds MAX_EVENTS_IN_PROGRESS unfinished events.
BACKLOG.configure(settings.max_events_in_progress)
inbound = op.input(
    "inbound",
    flow,
    inbound_source(settings, DRAIN, hold=lambda: BREAKER.is_open() or BACKLOG.full()),
)
completions = op.input("completions", flow, CompletionSource(runtime, DRAIN))
# parse & split, key by conversation, claim · handle · retry, outcomes (operators/pipeline.py)
records = outcome_records(
    inbound,
    completions,
    settings,
    runtime,
    paused=lambda: DRAIN.draining,  # draining: conversations start no new work
    handler_gate=BREAKER,
    backlog=BACKLOG,
)
op.output(
    "kafka-out",
    records,
    KafkaOutcomeSink(settings.producer_config(), runtime, settings.kafka_flush_timeout_s),
)
