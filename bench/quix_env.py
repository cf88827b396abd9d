"""The virtualenv contestant E runs in: Quix Streams pins older confluent-kafka and pydantic
than the project, so it cannot share `.venv`. Made once under `.stack/quix-venv` (kept between
bench runs, rebuilt when the pin changes)."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

from bench.stack import ROOT

# A current 3.x, pinned so every run measures the same Quix.
QUIXSTREAMS = "quixstreams==3.28.1"
VENV = ROOT / ".stack" / "quix-venv"


def quix_python() -> Path:
    """The venv's interpreter, made first if missing (callers take turns on a lock: CI makes it
    in the background while the tests run)."""
    python = VENV / "bin" / "python"
    stamp = VENV.parent / f".quix-venv-{QUIXSTREAMS}"
    if stamp.exists():
        return python
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with (VENV.parent / ".quix-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
            pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            subprocess.run([*pip, QUIXSTREAMS], check=True)
            stamp.touch()
    return python
