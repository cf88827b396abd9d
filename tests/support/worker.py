"""Run the real dataflow (`python -m bytewax.run dataflow -r …`) as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(
        self, env: dict[str, str], recovery_dir: Path, log_path: Path, workers: int = 1
    ) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.recovery_dir = recovery_dir
        self.log_path = log_path
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> WorkerProcess:
        if not self.recovery_dir.exists():
            self.recovery_dir.mkdir(parents=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bytewax.recovery",
                    str(self.recovery_dir),
                    str(max(self.workers, 1)),
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
                "1",
                "-b",
                "0",
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
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
