"""What the wheel ships: the worker's packages, not the dev tooling, tests, harness or bench.

The wheel is built (`pip wheel`, with build isolation: setuptools from the index) from a copy of
the checkout, because setuptools reuses `build/lib` and a stale file there would be shipped.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from devtools.webhooks import conversation_webhook
from devtools.worker import ROOT

# One import root: dataflow.py, operators/ and sinks/ ship inside it (ARCHITECTURE.md).
EXPECTED_TOP_LEVEL = {"wa_worker"}
# Never in the wheel, whatever the layout: they need the checkout, or are not the worker.
NEVER_SHIPPED = {"devtools", "tests", "harness", "bench", "scripts", "deploy", "docker"}
CONSOLE_SCRIPT = "wa_worker.cli.app:app"

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
    # The listing is the package's, so the check below means it.
    assert "wa_worker/cli/app.py" in names
    assert [name for name in names if "devstack" in name] == []


def test_wheel_ships_the_ingress(wheel: zipfile.ZipFile) -> None:
    # `wa-worker ingress` imports it lazily: a package missing from pyproject.toml would only
    # show in the image, at its first start.
    names = wheel.namelist()
    assert {"wa_worker/ingress/server.py", "wa_worker/ingress/app.py"} <= set(names)


def test_wheel_console_script_is_the_cli(wheel: zipfile.ZipFile) -> None:
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(meta).decode())
    assert dict(parser["console_scripts"]) == {"wa-worker": CONSOLE_SCRIPT}


def test_installed_console_script_is_the_cli() -> None:
    (script,) = entry_points(group="console_scripts", name="wa-worker")
    assert script.value == CONSOLE_SCRIPT


def test_the_flow_ships_as_files_inside_the_package(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for name in (
        "wa_worker/dataflow.py",
        "wa_worker/operators/parse.py",
        "wa_worker/sinks/records.py",
    ):
        assert name in names
        assert wheel.getinfo(name).file_size > 0  # the linked file's content, not a link


def test_an_installed_wheel_replays_outside_the_checkout(
    wheel: zipfile.ZipFile, tmp_path: Path
) -> None:
    """`wa-worker` from the wheel alone: its copy of the package, run from elsewhere."""
    site = tmp_path / "site"
    wheel.extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "day.jsonl").write_bytes(conversation_webhook("w1", "31611", ["wamid.one"]) + b"\n")
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(site),  # ahead of the editable install of the checkout
        "KAFKA_BROKERS": "127.0.0.1:9",
        "REDIS_URL": "redis://127.0.0.1:9/0",  # nobody there: replay dedupes in memory
    }
    code = "import wa_worker, sys; print(wa_worker.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True
    )
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    result = subprocess.run(
        [sys.executable, "-m", "wa_worker", "replay", "day.jsonl", "--json", "--quiet"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["processed"] == 1
