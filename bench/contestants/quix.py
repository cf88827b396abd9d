"""E. Quix Streams: the core job written as a Quix Streams user would write it.

Split each envelope into its WhatsApp events (messages and statuses, keyed like the worker:
the message id, or status id + status; conversation = business phone number id + customer),
repartition by event key, drop events seen before with Quix's own RocksDB state, write one JSON
record per event to the processed topic keyed by conversation. At-least-once, Quix defaults
otherwise. No validation, no handler, no retries, no dead letters: less work than the worker.

Runs in its own virtualenv (`bench.quix_env`: quixstreams pins older confluent-kafka and
pydantic than the project), so it imports nothing from the project, and Quix only in `main`.
Stops on SIGTERM, like the worker. The bench only ever starts it as
`<quix venv>/bin/python bench/contestants/quix.py --brokers … --inbound … --processed …`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

Event = dict[str, Any]


def split(envelope: dict[str, Any]) -> Iterator[Event]:
    body = envelope["body"]
    if isinstance(body, str):  # the edge may pass the raw body on
        body = json.loads(body)
    for entry in body.get("entry") or []:
        for change in entry.get("changes") or []:
            value = change.get("value") or {}
            business = (value.get("metadata") or {}).get("phone_number_id") or "-"
            contacts = value.get("contacts") or [{}]
            for message in value.get("messages") or []:
                customer = message.get("from") or contacts[0].get("wa_id") or "-"
                yield {
                    "webhook_id": envelope["id"],
                    "event_key": message["id"],
                    "conversation_key": f"{business}:{customer}",
                    "kind": "message",
                    "payload": message,
                }
            for status in value.get("statuses") or []:
                customer = status.get("recipient_id") or "-"
                yield {
                    "webhook_id": envelope["id"],
                    "event_key": f"{status['id']}:{status['status']}",
                    "conversation_key": f"{business}:{customer}",
                    "kind": "status",
                    "payload": status,
                }


def first_time(event: Event, state: Any) -> bool:  # a quixstreams State
    if state.get("seen", False):
        return False
    state.set("seen", True)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--inbound", required=True)
    parser.add_argument("--processed", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    args, _ = parser.parse_known_args()
    # Imported here so the bench's own tests can check `split` without Quix installed.
    from quixstreams import Application

    app = Application(
        broker_address=args.brokers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        processing_guarantee="at-least-once",
        loglevel="WARNING",
    )
    processed = app.topic(args.processed, value_serializer="json", key_serializer="str")
    sdf = app.dataframe(app.topic(args.inbound, value_deserializer="json"))
    sdf = sdf.apply(split, expand=True)
    sdf = sdf.group_by(lambda event: event["event_key"], name="event_key")
    sdf = sdf.filter(first_time, stateful=True)
    # The bench tells webhooks apart by this header (the worker writes it too).
    sdf = sdf.set_headers(
        lambda event, _key, _ts, _headers: [("wa-webhook-id", event["webhook_id"].encode())]
    )
    sdf.to_topic(processed, key=lambda event: event["conversation_key"])
    app.run()


if __name__ == "__main__":
    main()
