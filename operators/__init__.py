"""Dataflow steps: sources, parse & split, per-conversation handling and retry, the reorder
window, backoff, completions, replay's finish tracking. Installed as `wa_worker.operators`."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

_LEGACY = "operators"  # the top-level name these modules had before issue 12


class _SameModule(importlib.abc.Loader):
    def __init__(self, module: ModuleType) -> None:
        self._module = module

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        return self._module

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its real name


class _LegacyNames(importlib.abc.MetaPathFinder):
    """Recovery snapshots written before the flow moved into the package pickle the
    conversation state as `operators.conversation.*`. Unpickling imports that name: this
    answers it with the `wa_worker.operators` module itself, so old snapshots resume with
    the same classes (not a second copy of the module, and also where no top-level
    `operators` exists, as in an installed wheel)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != _LEGACY and not fullname.startswith(_LEGACY + "."):
            return None
        module = importlib.import_module(f"{__name__.rpartition('.')[0]}.{fullname}")
        return importlib.util.spec_from_loader(fullname, _SameModule(module))


if __name__ == "wa_worker.operators" and not any(
    isinstance(finder, _LegacyNames) for finder in sys.meta_path
):
    sys.meta_path.insert(0, _LegacyNames())
