"""Imports go one way (ARCHITECTURE.md): core ← flow steps ← composition ← CLI, process set-up
beside the flow on the core; the worker never imports dev tooling, tests, the harness or the
bench, and those share only `devtools` with the tests, not the tests themselves.

Read from the source (ast), not by importing: imports inside functions count too. A rule is an
importer glob (from the repository root) and the module prefixes those files must not import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from devtools.worker import ROOT

DEV_AND_TEST = ("devtools", "tests", "harness", "bench")
# The tiers of ARCHITECTURE.md, bottom up. The flow is reached as wa_worker.operators,
# wa_worker.sinks and wa_worker.dataflow only: the root names are the same files again.
ROOT_NAMES = ("operators", "sinks", "dataflow")
FLOW = ("wa_worker.operators", "wa_worker.sinks")
COMPOSITION = ("wa_worker.dataflow",)
PROCESS = ("wa_worker.process",)
CLI = ("wa_worker.cli", "wa_worker.__main__", "wa_worker.replay")
ABOVE_CORE = (*FLOW, *COMPOSITION, *PROCESS, *CLI)
CORE = ("wa_worker/errors.py", "wa_worker/settings.py", "wa_worker/models/**/*.py")
RULES: list[tuple[str, tuple[str, ...]]] = [
    # The shipped worker (the wheel's packages) stands alone.
    ("wa_worker/**/*.py", (*DEV_AND_TEST, *ROOT_NAMES)),
    ("operators/**/*.py", (*DEV_AND_TEST, *ROOT_NAMES)),
    ("sinks/**/*.py", (*DEV_AND_TEST, *ROOT_NAMES)),
    ("dataflow.py", (*DEV_AND_TEST, *ROOT_NAMES)),
    # The core imports nothing built on it.
    *((pattern, ABOVE_CORE) for pattern in CORE),
    ("wa_worker/core/**/*.py", ABOVE_CORE),
    # Flow steps import the core (and each other), never their composition or the CLI.
    ("operators/**/*.py", (*COMPOSITION, *PROCESS, *CLI)),
    ("sinks/**/*.py", (*COMPOSITION, *PROCESS, *CLI, "wa_worker.operators")),
    # Process set-up (start-up checks, health, logs) serves the core, not the flow.
    ("wa_worker/process/**/*.py", (*FLOW, *COMPOSITION, *CLI)),
    # Logging needs no HTTP server (it masks secrets with the core's rule).
    ("wa_worker/process/logs.py", ("wa_worker.process.health",)),
    # The ingress is a process of its own beside the flow: it uses the core, never the CLI.
    ("wa_worker/ingress/**/*.py", (*COMPOSITION, *CLI)),
    # The composition root assembles the flow; the CLI sits above it.
    ("dataflow.py", CLI),
    # Tools share dev tooling with the tests through devtools/, never through tests/.
    ("harness/**/*.py", ("tests",)),
    ("bench/**/*.py", ("tests",)),
    ("devtools/**/*.py", ("tests", "harness", "bench")),
]


def _module_of(path: Path, root: Path) -> list[str]:
    """The dotted package a file's relative imports start from."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts if path.name == "__init__.py" else parts[:-1]


def _parse(path: Path, attempts: int = 3) -> ast.Module:
    """CPython 3.11 checks ast's recursion depth against state other threads share: a
    traceback printed by another thread at that moment (it parses source for its carets) made
    ast.parse raise "AST constructor recursion depth mismatch" in CI. That race is no fault
    of the file read here: parse again."""
    for attempt in range(attempts):
        try:
            return ast.parse(path.read_text(), str(path))
        except SystemError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module `path` imports, relative imports made absolute."""
    found: set[str] = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _module_of(path, root)
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.add(base)
            # `from pkg import mod` may import the module pkg.mod.
            found.update(
                f"{base}.{alias.name}" if base else alias.name
                for alias in node.names
                if alias.name != "*"
            )
    return found


def violations(pattern: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    bad: list[str] = []
    for path in sorted(root.glob(pattern)):
        hits = {
            module
            for module in imported_modules(path, root)
            if any(module == p or module.startswith(p + ".") for p in forbidden)
        }
        # `from a.b import c` also yields a.b.c: report a.b alone.
        shown = sorted(m for m in hits if not any(m.startswith(h + ".") for h in hits))
        bad.extend(f"{path.relative_to(root)} imports {module}" for module in shown)
    return bad


@pytest.mark.parametrize(("pattern", "forbidden"), RULES, ids=[rule[0] for rule in RULES])
def test_import_direction(pattern: str, forbidden: tuple[str, ...]) -> None:
    assert list(ROOT.glob(pattern)), f"{pattern} matches no file: the rule checks nothing"
    assert violations(pattern, forbidden) == []


def test_the_scan_sees_every_kind_of_import(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "mod.py").write_text(
        "import os\n"
        "import tests.support.cli\n"
        "from tests import conftest\n"
        "from ..low import thing\n"  # relative: pkg.low
        "def later():\n"
        "    from bench.stack import Stack\n"
    )
    assert violations("pkg/**/*.py", ("tests", "bench", "pkg.low"), tmp_path) == [
        "pkg/sub/mod.py imports bench.stack",
        "pkg/sub/mod.py imports pkg.low",
        "pkg/sub/mod.py imports tests",
    ]
    # `from pkg import low` is an import of the module pkg.low.
    (tmp_path / "pkg" / "top.py").write_text("from pkg import low\n")
    assert violations("pkg/top.py", ("pkg.low",), tmp_path) == ["pkg/top.py imports pkg.low"]
