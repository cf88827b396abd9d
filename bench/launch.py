"""Start a contestant as its own process(es), and make sure none outlives the bench.

A, B and C are `python -m bench.contestants.<kind>`, told how many inbound records to expect;
D is the real worker, `python -m bytewax.run dataflow` with recovery (tests' WorkerProcess),
at the worker's default snapshot interval, one process or a two-process cluster on loopback;
E is the Quix Streams application in its own virtualenv. D and E run until SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.models import Contestant, Kind
from bench.quix_env import quix_python
from bench.stack import ROOT, RunTopics, Stack
from devtools.devstack import free_port
from devtools.worker import WorkerProcess
from wa_worker.settings import Settings

_LIVE: list[Running] = []
_SIGNALLED = (Kind.WORKER, Kind.QUIX)  # run until told to stop; the others exit by themselves


@dataclass
class Running:
    contestant: Contestant
    logs: list[Path]
    popens: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.popens]

    def failed_exit(self) -> str | None:
        """Why the contestant is gone before it should be, if it is."""
        for proc in self.popens:
            code = proc.poll()
            if code is not None and (code != 0 or self.contestant.kind in _SIGNALLED):
                return f"exited with code {code} before writing every output"
        return None

    def finish(self, timeout_s: float = 60) -> str | None:
        """A, B and C exit on their own; the worker drains on SIGTERM (every process of a
        cluster is signalled first). Returns what went wrong, if anything."""
        if self.contestant.kind in _SIGNALLED:
            for proc in self.popens:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        problems = []
        for proc in self.popens:
            try:
                code = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                problems.append(f"did not exit within {timeout_s:.0f}s")
                continue
            if code != 0:
                problems.append(f"exit code {code}")
        _LIVE.remove(self)
        return "; ".join(problems) or None

    def kill(self) -> None:
        for proc in self.popens:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self in _LIVE:
            _LIVE.remove(self)

    def where(self) -> str:
        return ", ".join(str(p) for p in self.logs)


def kill_all() -> None:
    for running in list(_LIVE):
        running.kill()


def launch(
    contestant: Contestant,
    stack: Stack,
    topics: RunTopics,
    expect: int,
    run_dir: Path,
    handler_url: str | None,
) -> Running:
    run_dir.mkdir(parents=True, exist_ok=True)
    if contestant.kind is Kind.WORKER:
        running = _worker(contestant, stack, topics, run_dir, handler_url)
    elif contestant.kind is Kind.QUIX:
        running = _quix(contestant, stack, topics, run_dir)
    else:
        running = _standalone(contestant, stack, topics, expect, run_dir, handler_url)
    _LIVE.append(running)
    return running


def _standalone(
    contestant: Contestant,
    stack: Stack,
    topics: RunTopics,
    expect: int,
    run_dir: Path,
    handler_url: str | None,
) -> Running:
    log = run_dir / f"{contestant.kind.value}.log"
    argv = [
        sys.executable,
        "-m",
        f"bench.contestants.{contestant.kind.value}",
        f"--brokers={stack.brokers}",
        f"--inbound={topics.inbound}",
        f"--processed={topics.processed}",
        f"--dlq={topics.dlq}",
        f"--expect={expect}",
        f"--redis-url={stack.redis_url}",
        f"--redis-prefix={topics.redis_prefix}",
    ]
    if handler_url:
        argv.append(f"--handler-url={handler_url}")
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return Running(contestant, [log], [proc])


def _quix(contestant: Contestant, stack: Stack, topics: RunTopics, run_dir: Path) -> Running:
    log = run_dir / "quix.log"
    argv = [
        str(quix_python()),
        str(ROOT / "bench" / "contestants" / "quix.py"),
        f"--brokers={stack.brokers}",
        f"--inbound={topics.inbound}",
        f"--processed={topics.processed}",
        # The run's tag names Quix's own repartition and changelog topics: deleted with the run's.
        f"--group={topics.tag}-quix",
        f"--state-dir={run_dir / 'quix-state'}",
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return Running(contestant, [log], [proc])


def _worker(
    contestant: Contestant,
    stack: Stack,
    topics: RunTopics,
    run_dir: Path,
    handler_url: str | None,
) -> Running:
    env = {
        **stack.env,
        "KAFKA_BROKERS": stack.brokers,
        **stack.redis_env(contestant.redis),
        "KAFKA_INBOUND_TOPIC": topics.inbound,
        "KAFKA_PROCESSED_TOPIC": topics.processed,
        "KAFKA_DLQ_TOPIC": topics.dlq,
        "REDIS_KEY_PREFIX": topics.redis_prefix,
        "KAFKA_GROUP_ID": f"{topics.redis_prefix}group",
        "HEALTH_PORT": "0",
        "LOG_LEVEL": "WARNING",
        "HANDLER_URL": handler_url or "",
    }
    if contestant.concurrency is not None:
        env["HANDLER_CONCURRENCY"] = str(contestant.concurrency)
    if contestant.reorder_window_ms is not None:
        env["REORDER_WINDOW_MS"] = str(contestant.reorder_window_ms)
    count = contestant.processes
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(count))
    workers = [
        WorkerProcess(
            env,
            run_dir / "recovery",
            run_dir / f"worker-{i}.log",
            cluster_args=("-i", str(i), "-a", addresses) if count > 1 else (),
            recovery_partitions=count,
            snapshot_interval_s=Settings.model_fields["snapshot_interval_s"].default,
        )
        for i in range(count)
    ]
    popens = []
    for worker in workers:
        worker.start()
        assert worker.proc is not None
        popens.append(worker.proc)
    return Running(contestant, [w.log_path for w in workers], popens)
