"""The virtualenv contestant E runs in: Quix Streams pins older confluent-kafka and pydantic
than the project, so it cannot share `.venv`. Made once under `.stack/quix-venv` (kept between
bench runs, rebuilt when the pin changes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.stack import ROOT

# A current 3.x, pinned so every run measures the same Quix.
QUIXSTREAMS = "quixstreams==3.28.1"
VENV = ROOT / ".stack" / "quix-venv"


def quix_python() -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / f".installed-{QUIXSTREAMS}"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", QUIXSTREAMS],
            check=True,
        )
        stamp.touch()
    return python
