"""`python -m bench.parse_cost [--records N] [--rounds R] [--baseline REV]`: what the `parse`
step costs per event, this checkout's against another revision's, in one process.

The baseline is operators/parse.py as it was at REV (default `main`), loaded from git beside
the current one; both run `parse_batch` (batches of 100, as the Kafka source gives them) on
the same envelopes of each bench shape (bench.workload), interleaved, R rounds, and the best
round counts. `base-signed` is the base shape as `wa-worker ingress` publishes it: the body a
raw string, signed, checked with WA_APP_SECRET. Both must give the same events and dead
letters, else it stops. `--candidates` also times the decoders that were measured to choose
one (json, orjson, msgspec, pydantic).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import hmac
import json
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

from bytewax.connectors.kafka import KafkaSourceMessage

from bench.baseline import module_at
from bench.workload import generate
from wa_worker.models.records import DeadLetter, WebhookEvent
from wa_worker.operators import parse as current
from wa_worker.operators.inbound import InboundMessage

SHAPES = ("base", "few", "campaign", "mixed")
SECRET = b"parse-cost-app-secret"
BATCH = 100
Parse = Callable[[list[InboundMessage]], list[WebhookEvent | DeadLetter]]


def baseline_module(rev: str) -> types.ModuleType:
    return module_at(rev, "operators/parse.py", "parse_baseline")


def signed(value: bytes) -> bytes:
    """The envelope with its body as the raw, signed string the ingress publishes."""
    envelope = json.loads(value)
    body = json.dumps(envelope["body"], separators=(",", ":"))
    signature = hmac.new(SECRET, body.encode(), hashlib.sha256).hexdigest()
    envelope["headers"]["x-hub-signature-256"] = f"sha256={signature}"
    return json.dumps({**envelope, "body": body}, separators=(",", ":")).encode()


def batches(shape: str, records: int) -> list[list[InboundMessage]]:
    name, _, variant = shape.partition("-")
    messages: list[InboundMessage] = [
        KafkaSourceMessage(
            key=r.key,
            value=signed(r.value) if variant == "signed" else r.value,
            topic="wa.inbound",
            partition=0,
            offset=i,
            timestamp=(1, 1_767_225_600_000 + i),
        )
        for i, r in enumerate(generate(records, name).records)
    ]
    return [messages[i : i + BATCH] for i in range(0, len(messages), BATCH)]


def run(parse: Parse, work: Sequence[list[InboundMessage]]) -> tuple[float, int]:
    """(CPU seconds, items out) of one pass."""
    started, out = time.process_time(), 0
    for batch in work:
        out += len(parse(batch))
    return time.process_time() - started, out


def comparable(item: WebhookEvent | DeadLetter) -> dict[str, Any]:
    if isinstance(item, WebhookEvent):
        return item.model_dump()
    return item.model_dump(exclude={"first_failure_at", "last_failure_at"})


def check_same(old: Parse, new: Parse, work: Sequence[list[InboundMessage]]) -> None:
    for batch in work:
        a, b = old(batch), new(batch)
        if [comparable(x) for x in a] != [comparable(x) for x in b]:
            raise SystemExit(f"outputs differ at offset {batch[0].offset}")


def compare(rev: str, records: int, rounds: int) -> None:
    baseline = baseline_module(rev)
    print(f"parse_batch per event (CPU µs, best of {rounds}); baseline {rev}, {records} records")
    print(f"{'shape':12} {'events':>7} {'baseline':>9} {'now':>9} {'ratio':>7}")
    for shape in (*SHAPES, "base-signed"):
        secret = SECRET if shape.endswith("-signed") else None
        old, new = baseline.parse_batch(secret), current.parse_batch(secret)
        work = batches(shape, records)
        check_same(old, new, work)
        best = {"old": float("inf"), "new": float("inf")}
        events = 0
        # The collector off while timing, and run between rounds: with it on, where its
        # passes fell (the allocations of both revisions before) swung a ratio by ±30 %.
        gc.disable()
        try:
            for _ in range(rounds):
                for name, parse in (("old", old), ("new", new)):
                    took, events = run(parse, work)
                    best[name] = min(best[name], took)
                    gc.collect()
        finally:
            gc.enable()
        per_old, per_new = best["old"] / events * 1e6, best["new"] / events * 1e6
        ratio = per_old / per_new
        print(f"{shape:12} {events:7d} {per_old:9.1f} {per_new:9.1f} {ratio:6.2f}x")


def candidates(records: int) -> None:
    """The decoders measured before choosing, per record of each shape (best of 3)."""
    import msgspec
    import orjson

    from wa_worker.models import webhook, webhook_structs
    from wa_worker.models.records import Envelope

    def best(f: Callable[[Any], object], xs: Sequence[Any]) -> float:
        times = []
        for _ in range(3):
            started = time.process_time()
            for x in xs:
                f(x)
            times.append(time.process_time() - started)
        return min(times) / len(xs) * 1e6

    for shape in SHAPES:
        raws = [r.value for r in generate(records, shape).records]
        data = [json.loads(r) for r in raws]
        bodies = [d["body"] for d in data]
        rows: dict[str, float] = {
            "json.loads": best(json.loads, raws),
            "orjson.loads (big ints become floats)": best(orjson.loads, raws),
            "msgspec.json.decode": best(msgspec.json.decode, raws),
            "pydantic Envelope.model_validate_json": best(Envelope.model_validate_json, raws),
            "pydantic Envelope + WebhookPayload + Values": best(_pydantic_all(webhook), data),
            "msgspec convert Envelope (+ Payload) + Values": best(
                _msgspec_all(webhook_structs), data
            ),
            "msgspec typed decode of bytes (no dicts kept)": best(
                msgspec.json.Decoder(type=webhook_structs.Envelope).decode, raws
            ),
        }
        print(f"-- {shape}: µs per record ({len(bodies)} records)")
        for name, took in rows.items():
            print(f"  {name:48} {took:7.2f}")


def _values(data: dict[str, Any]) -> list[Any]:
    return [c["value"] for e in data["body"]["entry"] for c in e["changes"]]


def _pydantic_all(webhook: Any) -> Callable[[dict[str, Any]], object]:
    from wa_worker.models.records import Envelope

    def check(data: dict[str, Any]) -> object:
        Envelope.model_validate(data)
        webhook.WebhookPayload.model_validate(data["body"])
        return [webhook.Value.model_validate(v) for v in _values(data)]

    return check


def _msgspec_all(structs: Any) -> Callable[[dict[str, Any]], object]:
    def check(data: dict[str, Any]) -> object:
        structs.checked(data, structs.Envelope)  # an object body is checked as a payload too
        return [structs.checked(v, structs.Value) for v in _values(data)]

    return check


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.parse_cost", description=__doc__)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--candidates", action="store_true", help="time the decoders too")
    args = parser.parse_args(argv)
    compare(args.baseline, args.records, args.rounds)
    if args.candidates:
        candidates(args.records)


if __name__ == "__main__":
    main()
