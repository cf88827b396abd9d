"""Run `wa-worker` commands as a user would: a subprocess with the test stack's settings."""

from __future__ import annotations

import os
import subprocess
import sys

from devtools.worker import ROOT


def run_cli(
    env: dict[str, str],
    *args: str,
    module: str = "wa_worker.cli",
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result
