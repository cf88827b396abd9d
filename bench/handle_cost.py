"""The `handle` step's own cost, old code against new in one run: `python -m bench.handle_cost`.

Drives `ConversationLogic` as Bytewax would, without Bytewax or I/O: rounds of a keyed batch
(new events plus the previous round's claim results, as the completion source returns them)
through each conversation's `on_batch`, the pass-through handler answering inline, and every
`--epoch` rounds a `snapshot()` of each conversation touched. The old code is
`operators/conversation.py` at `--base` (git), loaded as a module of its own. Prints, per
version, CPU per 10k events, rounds (each a Redis round trip and a hop through the dataflow
in the real worker: the claim wait), snapshot CPU, and the ratios. Then the epoch close alone:
`snapshot()` and `pickle.dumps` (what Bytewax does with each) of many conversations with work
in flight, best of `--repeat`, old and new interleaved.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from bench.baseline import module_at
from devtools.webhooks import text_event
from wa_worker.core.backlog import Backlog
from wa_worker.core.breaker import CircuitBreaker
from wa_worker.models.completions import ClaimResult, ClaimStatus, HandleResult, HandleStatus
from wa_worker.models.records import WebhookEvent
from wa_worker.operators import conversation as new_module
from wa_worker.operators.backoff import BackoffPolicy


def old_module(base: str) -> ModuleType:
    return module_at(base, "operators/conversation.py", "_handle_cost_old_conversation")


class Submitter:
    """Claims are answered CLAIMED in the next round; the handler answers inline (pass-through),
    as each version's runtime did: a result per event (old), or one shared result (new)."""

    def __init__(self, shared: bool = False) -> None:
        self.claims: list[tuple[str, ClaimResult]] = []
        self.shared = HandleResult("", "", HandleStatus.OK, result=None) if shared else None

    def claim(self, route_key: str, event_key: str, token: str, lease_ms: int) -> None:
        self.claims.append((route_key, ClaimResult(event_key, token, ClaimStatus.CLAIMED)))

    def handle(self, route_key: str, event: WebhookEvent, token: str) -> None:
        raise AssertionError("the pass-through handler answers inline")

    def inline_handled(self, count: int) -> None:
        pass

    def handle_inline(self, event: WebhookEvent, token: str) -> HandleResult | None:
        if self.shared is not None:
            return self.shared
        return HandleResult(event.event_key, token, HandleStatus.OK, result=None, latency_s=0.0)

    def record_attempts(self, event_key: str, token: str, attempts: int, lease_ms: int) -> None:
        pass


@dataclass
class Figures:
    cpu_s: float
    snapshot_cpu_s: float
    rounds: int
    outcomes: int


def run(module: ModuleType, events: list[WebhookEvent], batch: int, epoch: int) -> Figures:
    submit = Submitter(shared=module is new_module)
    policy = module.ConversationPolicy(BackoffPolicy(1000, 60_000, 0.0, 3), 30_000, 10.0)
    backlog, breaker = Backlog(), CircuitBreaker(enabled=False)
    logics: dict[str, Any] = {}
    touched: set[str] = set()
    pending = 0
    outcomes = rounds = 0
    snapshot_s = 0.0
    feed = iter(range(0, len(events), batch))
    gc.collect()
    started = time.process_time()
    while True:
        inbox: defaultdict[str, list[Any]] = defaultdict(list)
        for key, result in submit.claims:
            inbox[key].append(result)
        submit.claims = []
        start = next(feed, None)
        if start is not None:
            for event in events[start : start + batch]:
                inbox[event.conversation_key].append(event)
                pending += 1
        if not inbox:
            break
        rounds += 1
        for key, values in inbox.items():
            logic = logics.get(key)
            if logic is None:
                logic = logics[key] = module.ConversationLogic(
                    lambda e: e.conversation_key,
                    submit,
                    policy,
                    None,
                    paused=lambda: False,
                    handler_gate=breaker,
                    backlog=backlog,
                )
            out, discard = logic.on_batch(values)
            outcomes += len(out)
            touched.add(key)
            if discard:
                del logics[key]
        if rounds % epoch == 0:  # the epoch closes: every touched key still alive snapshots
            snap_started = time.process_time()
            for key in touched:
                if key in logics:
                    logics[key].snapshot()
            snapshot_s += time.process_time() - snap_started
            touched.clear()
    cpu_s = time.process_time() - started
    assert outcomes == pending == len(events), (outcomes, pending)
    return Figures(cpu_s, snapshot_s, rounds, outcomes)


def workload(count: int, conversations: int) -> list[WebhookEvent]:
    received = datetime.now(UTC)  # the parser sets it from the envelope
    return [
        text_event(
            f"wamid.hc{i}",
            wa_id=f"316{i % conversations:08d}",
            webhook_id=f"w{i}",
            received_at=received,
        )
        for i in range(count)
    ]


def epoch_close(module: ModuleType, events: list[WebhookEvent], repeat: int) -> float:
    """Seconds to snapshot and pickle every conversation, each with its events' claims in
    flight (as at an epoch close under load); the best of `repeat`."""
    submit = Submitter()
    policy = module.ConversationPolicy(BackoffPolicy(1000, 60_000, 0.0, 3), 30_000, 10.0)
    by_key: defaultdict[str, list[Any]] = defaultdict(list)
    for event in events:
        by_key[event.conversation_key].append(event)
    logics = []
    for values in by_key.values():
        logic = module.ConversationLogic(lambda e: e.conversation_key, submit, policy, None)
        logic.on_batch(values)
        logics.append(logic)
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.process_time()
        for logic in logics:
            pickle.dumps(logic.snapshot())
        best = min(best, time.process_time() - started)
    # The new snapshot must resume as the old one did: same events, same tokens.
    resumed = pickle.loads(pickle.dumps(logics[0].snapshot()))
    assert [p.event for p in resumed.queue] == by_key[next(iter(by_key))]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--conversations", default="60,2000", help="shapes: conversations each")
    parser.add_argument("--batch", type=int, default=1000, help="new events per round")
    parser.add_argument("--epoch", type=int, default=20, help="rounds per snapshot")
    parser.add_argument("--base", default="main", help="the old code's git revision")
    parser.add_argument("--repeat", type=int, default=3, help="best of")
    args = parser.parse_args()
    old = old_module(args.base)
    for conversations in (int(c) for c in args.conversations.split(",")):
        events = workload(args.events, conversations)
        best: dict[str, Figures] = {}
        for _ in range(args.repeat):
            for name, module in (("old", old), ("new", new_module)):
                figures = run(module, events, args.batch, args.epoch)
                if name not in best or figures.cpu_s < best[name].cpu_s:
                    best[name] = figures
        print(f"{args.events:,} events over {conversations:,} conversations:")
        for name, f in best.items():
            per_10k = f.cpu_s / args.events * 10_000
            snap_10k = f.snapshot_cpu_s / args.events * 10_000
            print(
                f"  {name}: {per_10k:6.3f} s CPU/10k events (snapshots {snap_10k:6.3f}), "
                f"{f.rounds:6,} rounds"
            )
        o, n = best["old"], best["new"]
        print(
            f"  new/old: CPU {n.cpu_s / o.cpu_s:.2f}, "
            f"snapshots {n.snapshot_cpu_s / max(o.snapshot_cpu_s, 1e-9):.2f}, "
            f"rounds {n.rounds / o.rounds:.3f}"
        )
    for conversations, per in ((2000, 1), (2000, 2), (60, 80)):
        events = workload(conversations * per, conversations)
        times = {"old": float("inf"), "new": float("inf")}
        for _ in range(args.repeat):  # interleaved: load on the machine hits both alike
            for name, module in (("old", old), ("new", new_module)):
                times[name] = min(times[name], epoch_close(module, events, 3))
        print(
            f"epoch close, {conversations:,} conversations x {per} in flight: "
            f"old {times['old'] * 1000:.1f} ms, new {times['new'] * 1000:.1f} ms, "
            f"new/old {times['new'] / times['old']:.2f}"
        )


if __name__ == "__main__":
    main()
