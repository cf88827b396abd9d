"""Run the real dataflow (`python -m bytewax.run dataflow -r …`) as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ChildProcess:
    """Signals and waits for a subprocess the tests started (`proc`, None until started)."""

    proc: subprocess.Popen[bytes] | None = None

    def send(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 30) -> int | None:
        """The exit code; killed (and None-safe) when it does not exit in time."""
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return self.proc.returncode


class WorkerProcess(ChildProcess):
    def __init__(
        self,
        env: dict[str, str],
        recovery_dir: Path,
        log_path: Path,
        workers: int = 1,
        cluster_args: tuple[str, ...] = (),
        recovery_partitions: int = 1,
        snapshot_interval_s: int = 1,
    ) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.recovery_dir = recovery_dir
        self.log_path = log_path
        self.workers = workers
        self.cluster_args = cluster_args  # e.g. ("-i", "0", "-a", "host:port;host:port")
        self.recovery_partitions = max(recovery_partitions, workers)
        self.snapshot_interval_s = snapshot_interval_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> WorkerProcess:
        if not any(self.recovery_dir.glob("part-*")):
            self.recovery_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bytewax.recovery",
                    str(self.recovery_dir),
                    str(self.recovery_partitions),
                ],
                check=True,
                cwd=ROOT,
            )
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bytewax.run",
                "dataflow",
                "-w",
                str(self.workers),
                "-r",
                str(self.recovery_dir),
                "-s",
                str(self.snapshot_interval_s),
                "-b",
                "0",
                *self.cluster_args,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.starts += 1
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Abrupt death (kill -9): no close, no flush, no snapshot."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 30) -> int | None:
        self.send(sig)
        return self.wait(timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
