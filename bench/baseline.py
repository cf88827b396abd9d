"""One module of the project as it was at a git revision, loaded beside today's code, so a
cost script can time old against new in one process (the same machine, the same moment)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_at(rev: str, path: str, name: str) -> types.ModuleType:
    """`path` (e.g. "operators/parse.py") at `rev` as the module `name`; it imports today's
    versions of everything else."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType(name)
    module.__file__ = f"{rev}:{path}"
    sys.modules[name] = module  # dataclasses and pydantic look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module
