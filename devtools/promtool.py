"""Prometheus's `promtool`, built from the Go module proxy into `.stack/promtool/<version>/`.

Checks and unit-tests deploy/prometheus/alerts.yml (tests/test_alert_rules.py). Built once per
version, without the service-discovery plugins (`remove_all_sd`: rules need none, and they are
most of the build); Go's build cache makes a rebuild after `.stack/` is gone fast.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = "github.com/prometheus/prometheus/cmd/promtool"
VERSION = "v0.316.0"  # a Prometheus 3 release (module versions v0.3xx.y)


def promtool_path() -> Path:
    return ROOT / ".stack" / "promtool" / VERSION / "promtool"


def ensure_promtool() -> Path:
    """The binary, built first if missing. Callers take turns on a lock: `scripts/bootstrap`
    starts the build in the background, and a test that needs it waits for that build."""
    path = promtool_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            _build(path)
    return path


def _build(path: Path) -> None:
    go = shutil.which("go")
    if go is None:
        # This machine kind ships Go 1.26; the module's go.mod asks for 1.26.7 (Go >= 1.21
        # fetches a newer toolchain from the module proxy by itself).
        raise RuntimeError(f"promtool: `go` not found; {MODULE}@{VERSION} needs Go 1.26.7+")
    print(f"promtool: building {MODULE}@{VERSION} into {path.parent}", file=sys.stderr)
    env = {**os.environ, "GOBIN": str(path.parent)}
    subprocess.run(
        [go, "install", "-tags", "remove_all_sd", f"{MODULE}@{VERSION}"], check=True, env=env
    )
