"""`python -m bench.trace_cost [ENVELOPES] [ROUNDS]`: what traces cost a replay.

Replays the benchmark's workload (bench.workload) with traces off and on (OTLP/HTTP to a local
receiver in this process), interleaved, each run under a Redis prefix of its own (deleted
after). TRACE_COST_BASELINE=DIR adds runs of another checkout (with its own .venv), e.g.
the main branch's, to show what "off" costs against code without traces. Prints each run's
wall time and CPU time and the medians' ratios to "off".
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from bench.workload import generate
from devtools.otlp_receiver import OtlpReceiver
from devtools.worker import ROOT


def _run(
    path: Path, out: Path, env: dict[str, str], prefix: str, root: Path = ROOT
) -> tuple[float, float, int]:
    """(wall s, CPU s, events) of one replay, by the checkout at `root`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    args = ["replay", str(path), "-o", str(out), "-q", "--json", "--dedupe-prefix", prefix]
    done = subprocess.run(
        [str(root / ".venv" / "bin" / "python"), "-m", "wa_worker", *args],
        cwd=root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, int(json.loads(done.stdout)["events"])


def main(envelopes: int = 20_000, rounds: int = 3) -> None:
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(redis_url)
    with tempfile.TemporaryDirectory() as tmp, OtlpReceiver(keep=False) as receiver:
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(b"\n".join(r.value for r in generate(envelopes).records) + b"\n")
        base = {"REDIS_URL": redis_url, "KAFKA_BROKERS": "127.0.0.1:1"}
        modes = {
            "off": base,
            "on": {
                **base,
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            },
        }
        roots = {m: ROOT for m in modes}
        if baseline := os.environ.get("TRACE_COST_BASELINE"):
            modes["base"], roots["base"] = base, Path(baseline)
        results: dict[str, list[tuple[float, float, int]]] = {m: [] for m in modes}
        for round_ in range(rounds):
            for mode, env in modes.items():
                prefix = f"tracecost:{uuid.uuid4().hex[:8]}:"
                try:
                    run = _run(path, Path(tmp) / "out", env, prefix, roots[mode])
                    results[mode].append(run)
                finally:
                    keys = list(client.scan_iter(match=prefix + "*", count=1000))
                    for i in range(0, len(keys), 1000):
                        client.delete(*keys[i : i + 1000])
                took, used, events = results[mode][-1]
                line = f"{events} events, {took:.1f} s, CPU {used:.1f} s"
                print(f"round {round_ + 1} {mode:>4}: {line}")
        wall = {m: statistics.median(r[0] for r in runs) for m, runs in results.items()}
        cpu = {m: statistics.median(r[1] for r in runs) for m, runs in results.items()}
        for mode in modes:
            print(
                f"median {mode:>4}: wall {wall[mode]:.1f} s (x{wall[mode] / wall['off']:.2f} of"
                f" off), CPU {cpu[mode]:.1f} s (x{cpu[mode] / cpu['off']:.2f} of off)"
            )
        print(f"{receiver.posts} OTLP posts received")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
