"""Everything between the dataflow's inputs and its output, wired once.

The worker (`dataflow.py`, Kafka in and out) and the offline replay (`wa_worker/replay.py`,
a file in and out) both call `outcome_records`, so they run the same operators:

inbound ─→ parse & split ─┬─→ events ─→ key by conversation ─┐
                          │                 completions ─────┴─→ claim · handle · retry
                          └─→ dead letters (bad input) ────────────────────┬──────┘
                                                                           ↓
                                                            outcomes ─→ records

Step ids are the ones the worker always had: renaming one would orphan recovered state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError
from bytewax.dataflow import Stream

from operators.conversation import Counter, HandlerGate, conversation_builder, route_key
from operators.finish import FinishTracker
from operators.inbound import InboundItem, consumer_error, is_message
from operators.parse import is_event, parse_batch
from sinks.records import KafkaRecord, Topics, to_record
from wa_worker.models.completions import Completion
from wa_worker.models.records import DeadLetter
from wa_worker.runtime import IoRuntime
from wa_worker.settings import Settings


def outcome_records(
    inbound: Stream[InboundItem],
    completions: Stream[tuple[str, Completion]],
    settings: Settings,
    runtime: Callable[[], IoRuntime],
    paused: Callable[[], bool],
    handler_gate: HandlerGate,
    finish: FinishTracker | None = None,
    backlog: Counter | None = None,
) -> Stream[KafkaRecord]:
    """One output record (processed or dead letter) per inbound event or unusable record.

    `paused`: start no new work (a drain). `finish`: for a bounded input, counts what is
    still open so the run can end once every event has its outcome. `backlog`: counts the
    events taken in and not finished (the Kafka input waits at a limit).
    """
    secret = settings.wa_app_secret.get_secret_value().encode() if settings.wa_app_secret else None
    topics = Topics(
        settings.kafka_processed_topic, settings.kafka_dlq_topic, settings.kafka_inbound_topic
    )
    max_bytes = settings.kafka_max_message_bytes  # the producer's limit, for the file sink too
    readable = op.branch("readable", inbound, is_message)
    unreadable = op.flat_map(
        "consumer-errors",
        cast(Stream[KafkaError[bytes | None, bytes | None]], readable.falses),
        consumer_error,
    )

    parse = parse_batch(secret)
    parsed = op.flat_map_batch(
        "parse", readable.trues, finish.counted_parse(parse) if finish else parse
    )
    split = op.branch("valid", parsed, is_event)
    invalid = cast(Stream[DeadLetter], split.falses)  # parse yields events or dead letters

    by_conversation = op.key_on("by-conversation", split.trues, route_key(settings.handler_ordered))
    builder = conversation_builder(
        settings, runtime, paused=paused, handler_gate=handler_gate, backlog=backlog
    )
    handled = op.stateful_batch(
        "handle",
        op.merge("events-and-results", by_conversation, completions),
        finish.counted_logic(builder) if finish else builder,
    )

    outcomes = op.merge("outcomes", op.key_rm("unkey", handled), invalid, unreadable)
    return op.map("to-records", outcomes, lambda outcome: to_record(outcome, topics, max_bytes))
