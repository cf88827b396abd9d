"""Run the real ingress (`python -m wa_worker.cli ingress`) as a subprocess, and sign bodies."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools.devstack import free_port
from devtools.worker import ROOT, ChildProcess


def sign(body: bytes, secret: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class IngressProcess(ChildProcess):
    def __init__(self, env: dict[str, str], log_path: Path, port: int = 0) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, **env, "INGRESS_PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> IngressProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wa_worker.cli", "ingress"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ingress exited at start-up:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/livez", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"ingress not answering after {timeout_s}s:\n{self.log()}")

    def stop(self, timeout_s: float = 30) -> int | None:
        self.send(signal.SIGTERM)
        return self.wait(timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
