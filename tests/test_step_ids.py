"""The worker's step ids are pinned: recovery snapshots are keyed by them (the flow's name
included), so a renamed step orphans recovered state, Kafka offsets and pending retries too.

The list is the one the worker had before the code moved into one package (issue 12); a
recovery directory written by that layout resumes on this one only if it stays equal.
"""

from __future__ import annotations

from typing import Any

from wa_worker import dataflow
from wa_worker.core.services import Services
from wa_worker.operators.inbound import inbound_source
from wa_worker.settings import load_settings
from wa_worker.sinks.kafka_sink import KafkaOutcomeSink

PINNED = [
    "wa-worker.by-conversation",
    "wa-worker.by-conversation.map",
    "wa-worker.by-conversation.map.flat_map_batch",
    "wa-worker.completions",
    "wa-worker.consumer-errors",
    "wa-worker.consumer-errors.flat_map_batch",
    "wa-worker.events-and-results",
    "wa-worker.handle",  # the conversations' state: claims, retries, the reorder window
    "wa-worker.inbound",  # Kafka offsets
    "wa-worker.kafka-out",
    "wa-worker.outcomes",
    "wa-worker.parse",
    "wa-worker.readable",
    "wa-worker.to-records",
    "wa-worker.to-records.flat_map_batch",
    "wa-worker.unkey",
    "wa-worker.unkey.map",
    "wa-worker.unkey.map.flat_map_batch",
    "wa-worker.valid",
]


def _step_ids(step: Any) -> list[str]:
    return [step.step_id, *(i for sub in getattr(step, "substeps", []) for i in _step_ids(sub))]


def test_the_worker_flow_keeps_its_step_ids() -> None:
    # The worker's flow as worker_flow() builds it, without its process start-up.
    settings = load_settings(kafka_brokers="127.0.0.1:9")
    services = Services.create(settings)
    source = inbound_source(settings, services.drain, services.hold_input, services.positions)
    sink = KafkaOutcomeSink(settings.producer_config(), services.runtime, 1.0)
    flow = dataflow.build("wa-worker", services, source, ("kafka-out", sink))
    assert sorted(i for step in flow.substeps for i in _step_ids(step)) == PINNED


def test_importing_the_dataflow_has_no_side_effects() -> None:
    # `flow` is made on first access only (then settings, Kafka, signals, the health port).
    assert "flow" not in vars(dataflow)
