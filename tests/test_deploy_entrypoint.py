"""docker/entrypoint.sh and docker/healthcheck.py run directly (no Docker): recovery set-up,
the worker on the real stack, the HEALTHCHECK probe, SIGTERM → exit 0."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.devstack import free_port
from devtools.kafka import produce, read_topic
from devtools.webhooks import conversation_webhook
from devtools.worker import ROOT
from wa_worker.process.startup import health_port
from wa_worker.settings import load_settings

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
RECOVERY_SHIM = ROOT / "docker" / "entrypoint-recovery.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
VENV_BIN = str(Path(sys.executable).parent)


def _env(**extra: str) -> dict[str, str]:
    """This venv's `python` first on PATH, as /opt/venv/bin is in the image; no inherited
    Bytewax or recovery variables."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BYTEWAX_", "RECOVERY_", "HEALTH_PORT", "SNAPSHOT_"))
    }
    return {**base, "PATH": f"{VENV_BIN}:{base.get('PATH', '')}", **extra}


def _partitions(directory: Path) -> dict[int, int]:
    """part index → part count, read from each partition file."""
    found = {}
    for path in sorted(directory.glob("part-*.sqlite3")):
        with sqlite3.connect(path) as db:
            index, count = db.execute("SELECT part_index, part_count FROM parts").fetchone()
        found[int(index)] = int(count)
    return found


def _healthcheck(path: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), path],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_init_recovery_creates_the_partitions_once(tmp_path: Path) -> None:
    recovery = tmp_path / "a" / "recovery"  # parents are created too
    env = _env(RECOVERY_DIR=str(recovery), RECOVERY_PARTITIONS="3")
    first = subprocess.run(
        ["sh", str(ENTRYPOINT), "init-recovery"], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    assert _partitions(recovery) == {0: 3, 1: 3, 2: 3}
    again = subprocess.run(
        ["sh", str(ENTRYPOINT), "init-recovery"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "recovery partitions found" in again.stdout


def test_helm_chart_recovery_variables_are_honoured(tmp_path: Path) -> None:
    """Bytewax's chart runs `sh ./entrypoint-recovery.sh` with its own variable names."""
    recovery = tmp_path / "var-recovery"
    env = _env(BYTEWAX_RECOVERY_DIRECTORY=str(recovery), BYTEWAX_RECOVERY_PARTS="2")
    done = subprocess.run(["sh", str(RECOVERY_SHIM)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _partitions(recovery) == {0: 2, 1: 2}


def test_pods_sharing_one_volume_initialise_it_together(tmp_path: Path) -> None:
    """The Helm chart mounts one claim into every pod, whose init containers start at once."""
    recovery = tmp_path / "shared"
    env = _env(RECOVERY_DIR=str(recovery), RECOVERY_PARTITIONS="6")
    runs = [
        subprocess.Popen(
            ["sh", str(ENTRYPOINT), "init-recovery"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    assert [run.wait(60) for run in runs] == [0, 0, 0]
    # No scratch directories left (listed before _partitions opens the files: that adds -wal).
    assert sorted(p.name for p in recovery.iterdir()) == [f"part-{i}.sqlite3" for i in range(6)]
    assert _partitions(recovery) == dict.fromkeys(range(6), 6)


@pytest.mark.parametrize("ordinal, kept", [(0, {0: 5, 2: 5, 4: 5}), (1, {1: 5, 3: 5})])
def test_per_process_volumes_keep_their_share_of_partitions(
    tmp_path: Path, ordinal: int, kept: dict[int, int]
) -> None:
    recovery = tmp_path / "recovery"
    env = _env(
        RECOVERY_DIR=str(recovery),
        RECOVERY_PARTITIONS="5",
        RECOVERY_PER_PROCESS="true",
        BYTEWAX_PROCESSES="2",
        BYTEWAX_STATEFULSET_NAME="wa-worker",
        BYTEWAX_POD_NAME=f"wa-worker-{ordinal}",
    )
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), "init-recovery"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert _partitions(recovery) == kept
    assert [p.name for p in recovery.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "env, reason",
    [
        (
            {"RECOVERY_PER_PROCESS": "true", "BYTEWAX_PROCESSES": "4", "RECOVERY_PARTITIONS": "2"},
            "RECOVERY_PARTITIONS (2) must be >= BYTEWAX_PROCESSES (4)",
        ),
        ({"RECOVERY_PER_PROCESS": "true"}, "RECOVERY_PER_PROCESS=true needs BYTEWAX_PROCESSES"),
        ({"RECOVERY_PARTITIONS": "eight"}, "RECOVERY_PARTITIONS must be a positive integer"),
        (
            {"BYTEWAX_PYTHON_FILE_PATH": "/var/bytewax/other.py"},
            "BYTEWAX_PYTHON_FILE_PATH must name dataflow.py",
        ),
        ({"BYTEWAX_CLUSTER_SERVICE": "wa-cluster"}, "BYTEWAX_CLUSTER_SERVICE needs BYTEWAX_PROCES"),
    ],
)
def test_bad_settings_stop_the_entrypoint_with_a_reason(
    tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    done = subprocess.run(
        ["sh", str(ENTRYPOINT)],
        env=_env(RECOVERY_DIR=str(tmp_path / "recovery"), **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert reason in done.stderr
    assert not (tmp_path / "recovery").exists() or not any((tmp_path / "recovery").iterdir())


def test_other_commands_are_run_as_given() -> None:
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), "python", "-c", "print('hello')"],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout) == (0, "hello\n")


def test_healthcheck_fails_with_the_reason_when_nothing_listens() -> None:
    port = free_port()
    done = _healthcheck("/livez", _env(HEALTH_PORT=str(port)))
    assert done.returncode == 1
    assert f"127.0.0.1:{port}/livez" in done.stderr


def test_pods_serve_health_on_the_same_port(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(health_port=4900)
    assert health_port(settings, 2) == 4902  # processes sharing a host
    monkeypatch.setenv("BYTEWAX_POD_NAME", "wa-worker-2")
    assert health_port(settings, 2) == 4900  # a pod is a host of its own
    assert health_port(load_settings(health_port=0), 2) == 0


@pytest.fixture
def entrypoint_worker(
    tmp_path: Path, worker_env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str], Path, Path]]:
    recovery = tmp_path / "fresh" / "recovery"
    log_path = tmp_path / "entrypoint.log"
    env = _env(
        **{
            **worker_env,
            "HEALTH_PORT": str(free_port()),  # the fixture turns health off
        },
        RECOVERY_DIR=str(recovery),
        RECOVERY_PARTITIONS="2",
        SNAPSHOT_INTERVAL_S="1",
        BYTEWAX_WORKERS_PER_PROCESS="2",
        BYTEWAX_WORKDIR=str(ROOT),
        DRAIN_TIMEOUT_S="10",
        PYTHONUNBUFFERED="1",
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["sh", str(ENTRYPOINT)], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
    yield proc, env, recovery, log_path
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _wait_healthy(
    proc: subprocess.Popen[bytes], env: dict[str, str], log: Path, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        probe = _healthcheck("/livez", env)
        if probe.returncode == 0:
            return probe
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, probe.stderr + log.read_text(errors="replace")
        time.sleep(0.3)


def test_entrypoint_initialises_recovery_runs_the_worker_and_drains_on_sigterm(
    entrypoint_worker: tuple[subprocess.Popen[bytes], dict[str, str], Path, Path],
    stack: object,
    worker_env: dict[str, str],
) -> None:
    proc, env, recovery, log = entrypoint_worker
    probe = _wait_healthy(proc, env, log)
    assert f":{env['HEALTH_PORT']}/livez: HTTP 200" in probe.stdout
    assert _partitions(recovery) == {0: 2, 1: 2}
    assert _healthcheck("/readyz", env).returncode == 0

    brokers = worker_env["KAFKA_BROKERS"]
    produce(
        brokers,
        worker_env["KAFKA_INBOUND_TOPIC"],
        [(b"w1", conversation_webhook("w1", "31600001", ["wamid.ep1", "wamid.ep2"]))],
    )
    processed = read_topic(
        brokers,
        worker_env["KAFKA_PROCESSED_TOPIC"],
        until=lambda records: len(records) >= 2,
        timeout_s=60,
    )
    assert {r.header("wa-event-key") for r in processed} == {"wamid.ep1", "wamid.ep2"}

    # The entrypoint exec'd: the process we started is the dataflow itself.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text(errors="replace")[-3000:]
    assert "draining" in log.read_text(errors="replace")
    assert _healthcheck("/livez", env).returncode == 1
