"""A Redis that answers PING but refuses the worker's dedupe scripts (here: an ACL user without
scripting) must stop start-up with one line, and must turn /health red when it happens later,
never leave the worker claiming nothing behind a green health check."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from devtools.devstack import free_port
from devtools.worker import ROOT, WorkerProcess
from tests.conftest import Stack


class AclUser:
    """A Redis ACL user on the test's Redis, with every permission until `deny_scripts`."""

    def __init__(self, admin: redis.Redis, redis_url: str) -> None:
        self.admin = admin
        self.name = f"wa-{uuid.uuid4().hex[:8]}"
        self.password = f"pw-{uuid.uuid4().hex}"
        where = urlsplit(redis_url)
        self.url = f"redis://{self.name}:{self.password}@{where.hostname}:{where.port}/0"
        admin.execute_command(
            "ACL", "SETUSER", self.name, "on", f">{self.password}", "~*", "&*", "+@all"
        )

    def deny_scripts(self) -> None:
        self.admin.execute_command("ACL", "SETUSER", self.name, "-@scripting")


@pytest.fixture
def acl_user(redis_client: redis.Redis, stack: Stack) -> Iterator[AclUser]:
    user = AclUser(redis_client, stack.redis_url)
    yield user
    redis_client.execute_command("ACL", "DELUSER", user.name)


def test_start_up_stops_with_one_line_when_redis_refuses_the_scripts(
    worker_env: dict[str, str], acl_user: AclUser
) -> None:
    acl_user.deny_scripts()
    result = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **worker_env, "REDIS_URL": acl_user.url},
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"wa-worker: REDIS_URL: Redis at redis://{acl_user.name}:***@"), line
    assert "refuses the worker's dedupe script" in line and "no permissions" in line, line
    assert acl_user.password not in result.stderr


def test_health_fails_once_redis_refuses_the_scripts(
    start_worker: Callable[..., WorkerProcess], acl_user: AclUser
) -> None:
    port = free_port()
    start_worker(HEALTH_PORT=str(port), REDIS_URL=acl_user.url)
    url = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + 60
    while True:
        try:
            first = httpx.get(url, timeout=10)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the health server never answered"
            time.sleep(0.2)
    assert first.status_code == 200, first.text
    assert first.json()["checks"]["redis"]["mode"] == "standalone", first.text
    acl_user.deny_scripts()  # PING still answers
    deadline = time.monotonic() + 15
    while (answer := httpx.get(url, timeout=10)).status_code == 200:
        assert time.monotonic() < deadline, "/health stayed green while Redis refuses scripts"
        time.sleep(0.3)
    check = answer.json()["checks"]["redis"]
    assert answer.status_code == 503
    assert check["status"] == "error", check
    assert (
        "refuses the worker's dedupe script" in check["error"]
        and "no permissions" in check["error"]
    )
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 503
    assert acl_user.password not in answer.text
