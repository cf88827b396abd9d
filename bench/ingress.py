"""The ingress bench: HTTP servers compared, and the ingress beside its HTTP ceiling.

    python -m bench.ingress                      # ~4 min; Kafka from .stack/bench (started)
    python -m bench.ingress --brokers HOST:PORT  # a Kafka already running

Load: bench/loadgen.go (Go's net/http, kept-alive connections, signed ~1 KB bodies, one
different body per request), built with the local Go toolchain. It runs on the same machine and
shares the CPU with the server, so rows are measured in rounds, contestants interleaved, and
the medians shown: compare rows of one run, not runs of different days. Each server is one
process (the ingress scales by replicas). Peak: closed loop over --connections connections.
Paced: open loop at half of that contestant's peak (latency at a load it can carry). CPU:
the server process's own CPU time (threads and children) per request at peak, the figure the
other programs on a shared machine disturb least.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.ingress_servers import SECRET, SERVERS
from bench.procstats import cpu_seconds
from bench.stack import BENCH_DIR
from devtools import devstack
from devtools.ingress import IngressProcess

HERE = Path(__file__).resolve().parent
INGRESS = "ingress (publishing)"

Contestant = Callable[[], Any]  # a context manager giving (url, pid)


def build_loadgen() -> Path:
    binary = BENCH_DIR / "loadgen"
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(["go", "build", "-o", str(binary), "loadgen.go"], cwd=HERE, check=True)
    return binary


def load(binary: Path, url: str, seconds: float, connections: int, rate: float = 0) -> Any:
    argv = [str(binary), "-url", url, "-c", str(connections), "-d", f"{seconds}s"]
    argv += ["-rate", str(rate), "-secret", SECRET.decode()]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"loadgen failed: {out.stderr or out.stdout}")
    return json.loads(out.stdout)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its children (granian serves from a child process)."""
    total = cpu_seconds(pid) or 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                total += tree_cpu_s(int(entry.name))
    return total


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            # uvicorn and granian come with the bench extra: pip install -e '.[bench]'
            raise RuntimeError(f"server exited at start-up (argv {proc.args!r})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def candidate(name: str) -> Iterator[tuple[str, int]]:
    port = devstack.free_port()
    argv = [sys.executable, "-m", "bench.ingress_servers", name, str(port)]
    proc = subprocess.Popen(argv, cwd=HERE.parent)
    try:
        wait_port(port, proc)
        yield f"http://127.0.0.1:{port}/webhook", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def ingress(brokers: str) -> Iterator[tuple[str, int]]:
    topic = f"bench-ingress-{uuid.uuid4().hex[:8]}"
    devstack.create_topics(brokers, [topic], partitions=3)
    env = {
        "KAFKA_BROKERS": brokers,
        "KAFKA_INBOUND_TOPIC": topic,
        "WA_APP_SECRET": SECRET.decode(),
        "LOG_LEVEL": "WARNING",
    }
    process = IngressProcess(env, BENCH_DIR / "ingress.log").start()
    assert process.proc is not None
    try:
        yield process.url + "/webhook", process.proc.pid
    finally:
        process.stop()


def _starter(name: str) -> Contestant:
    return lambda: candidate(name)


def one_round(binary: Path, start: Contestant, args: argparse.Namespace) -> dict[str, Any]:
    with start() as (url, pid):
        load(binary, url, 1, args.connections)  # warm-up
        cpu = tree_cpu_s(pid)
        peak = load(binary, url, args.seconds, args.connections)
        peak["cpu_us_per_request"] = (tree_cpu_s(pid) - cpu) * 1e6 / max(1, peak["requests"])
        half = load(binary, url, args.seconds, args.connections, rate=max(1.0, peak["rps"] / 2))
    return {"peak": peak, "half": half}


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(phase: str, key: str) -> float:
        return float(statistics.median(r[phase].get(key, 0) for r in rounds))

    keys = ("rps", "p50_ms", "p99_ms", "errors", "cpu_us_per_request")
    return {phase: {k: med(phase, k) for k in keys} for phase in ("peak", "half")}


def row(name: str, result: dict[str, Any]) -> str:
    peak, half = result["peak"], result["half"]
    return (
        f"| {name} | {peak['rps']:,.0f} | {peak['p50_ms']:.1f} / {peak['p99_ms']:.1f} | "
        f"{peak['cpu_us_per_request']:,.0f} | {half['rps']:,.0f} | "
        f"{half['p50_ms']:.1f} / {half['p99_ms']:.1f} | {half['errors']:.0f} |"
    )


HEADER = (
    "| server | peak req/s | p50 / p99 ms | CPU µs/req | paced req/s | p50 / p99 ms paced "
    "| paced dropped |\n|---|---:|---:|---:|---:|---:|---:|"
)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingress", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="each measured run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are shown")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--brokers", help="a running Kafka (default: start .stack/bench's)")
    parser.add_argument("--servers", default=",".join(SERVERS), help="HTTP servers compared")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "ingress.json")
    args = parser.parse_args()
    binary = build_loadgen()
    brokers = args.brokers
    if not brokers:
        kafka, _ = devstack.services(BENCH_DIR)
        brokers = f"127.0.0.1:{devstack.start_kafka(0, service=kafka)}"
    contestants: dict[str, Contestant] = {
        name: _starter(name) for name in filter(None, args.servers.split(","))
    }
    contestants[INGRESS] = lambda: ingress(brokers)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in contestants}
    for number in range(args.rounds):
        for name, start in contestants.items():
            rounds[name].append(one_round(binary, start, args))
            print(f"round {number + 1}: {row(name, rounds[name][-1])}", flush=True)
    results = {name: median_of(runs) for name, runs in rounds.items()}
    print(HEADER)
    for name, result in results.items():
        print(row(name, result))
    args.out.write_text(json.dumps({"medians": results, "rounds": rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
