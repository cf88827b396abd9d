"""What the wheel ships: the worker's packages, not the dev tooling, tests, harness or bench.

The wheel is built (`pip wheel`, with build isolation: setuptools from the index) from a copy of
the checkout, because setuptools reuses `build/lib` and a stale file there would be shipped.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest

from devtools.worker import ROOT

# The top level of the wheel today. Issue 12 moves dataflow, operators and sinks into the
# package: then this becomes {"wa_worker"}.
EXPECTED_TOP_LEVEL = {"dataflow", "operators", "sinks", "wa_worker"}
# Never in the wheel, whatever the layout: they need the checkout, or are not the worker.
NEVER_SHIPPED = {"devtools", "tests", "harness", "bench", "scripts", "deploy", "docker"}
CONSOLE_SCRIPT = "wa_worker.cli:app"

# Not sources: caches, state, the venv, earlier build output.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".stack",
    ".state",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    base = tmp_path_factory.mktemp("wheel")
    src, out = base / "src", base / "out"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCES)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("wa_worker-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def _top_level(names: list[str]) -> set[str]:
    tops = {name.split("/", 1)[0] for name in names}
    return {top.removesuffix(".py") for top in tops if not top.endswith((".dist-info", ".data"))}


def test_wheel_top_level_is_the_worker_only(wheel: zipfile.ZipFile) -> None:
    top = _top_level(wheel.namelist())
    assert not top & NEVER_SHIPPED, f"dev/test code in the wheel: {sorted(top & NEVER_SHIPPED)}"
    assert top == EXPECTED_TOP_LEVEL


def test_wheel_has_no_devstack(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert "wa_worker/cli.py" in names  # the listing is the package's, so the check below means it
    assert [name for name in names if "devstack" in name] == []


def test_wheel_console_script_is_the_cli(wheel: zipfile.ZipFile) -> None:
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(meta).decode())
    assert dict(parser["console_scripts"]) == {"wa-worker": CONSOLE_SCRIPT}


def test_installed_console_script_is_the_cli() -> None:
    (script,) = entry_points(group="console_scripts", name="wa-worker")
    assert script.value == CONSOLE_SCRIPT
