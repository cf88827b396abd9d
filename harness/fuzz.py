"""Generated bad (and a few good) inbound records for the fuzz scenario. Deterministic by seed."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from devtools.webhooks import envelope, messages_value, payload, status, text_message


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-(2**63), 2**63)
    if kind == 3:
        return rng.random() * 10 ** rng.randint(-5, 300)
    if kind == 4:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(20)))
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [
        "id",
        "body",
        "headers",
        "object",
        "entry",
        "changes",
        "value",
        "messages",
        "from",
        "type",
        "text",
        "statuses",
        "metadata",
        "x",
    ]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def _valid(i: int, rng: random.Random) -> dict[str, Any]:
    wa_id = f"3168{rng.randrange(100):05d}"
    return payload(
        messages_value(
            messages=[text_message(f"wamid.f{i}", wa_id)],
            statuses=[status(f"wamid.fo{i}", wa_id)],
            wa_id=wa_id,
        )
    )


def _mutate(tree: Any, rng: random.Random) -> Any:
    """Replace one random subtree with random JSON."""
    tree = copy.deepcopy(tree)
    parent = tree
    while True:
        keys = list(parent) if isinstance(parent, dict) else list(range(len(parent)))
        if not keys:
            return tree
        key = rng.choice(keys)
        child = parent[key]
        if isinstance(child, dict | list) and child and rng.random() < 0.7:
            parent = child
            continue
        parent[key] = _random_json(rng)
        return tree


def _deep(n: int, as_object: bool) -> str:
    return ('{"a":' * n + "1" + "}" * n) if as_object else ("[" * n + "]" * n)


def fuzz_inputs(count: int, seed: int = 37) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    for i in range(count):
        roll = rng.randrange(10)
        if roll == 0:
            out.append(rng.randbytes(rng.randrange(0, 2000)))
        elif roll == 1:
            out.append(json.dumps(_random_json(rng)).encode())
        elif roll == 2:
            body: Any = _random_json(rng)
            out.append(envelope(f"f{i}", body if isinstance(body, dict | str) else {"x": body}))
        elif roll == 3:  # deep nesting, as the envelope or inside the body
            depth = rng.choice([50, 1000, 20_000])
            raw = _deep(depth, rng.random() < 0.5)
            out.append(
                raw.encode()
                if rng.random() < 0.5
                else b'{"id": "f%d", "headers": {}, "body": %s}' % (i, raw.encode())
            )
        elif roll == 4:  # huge strings; now and then a body of several MB
            size = 4_500_000 if rng.random() < 0.002 else rng.randrange(5_000, 60_000)
            body = _valid(i, rng)
            body["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "x" * size
            out.append(envelope(f"f{i}", body if rng.random() < 0.5 else json.dumps(body)))
        elif roll in (5, 6, 7):  # a valid payload with one subtree replaced
            out.append(envelope(f"f{i}", _mutate(_valid(i, rng), rng)))
        elif roll == 8:  # wrong types in the envelope itself
            bad = rng.choice(
                [
                    {"id": 7, "body": {}},
                    {"id": "x", "body": 3},
                    {"id": "x", "body": [], "headers": "h"},
                    {"id": "x", "body": {}, "timestamp": "yesterday"},
                ]
            )
            out.append(json.dumps(bad).encode())
        else:
            out.append(envelope(f"f{i}", _valid(i, rng)))
    return out
