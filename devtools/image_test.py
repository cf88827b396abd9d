"""Build the real Dockerfile with buildah on the local Debian base and run the image for real.

    python -m devtools.image_test        # scripts/image-test; exit 1 with the reason on failure

The image's own entrypoint, user and health check (read from its config) run against the real
Kafka and Redis of a stack started for this run (`.stack/image-test`, free ports, stopped at the
end): /livez and /readyz 200 through docker/healthcheck.py, signed webhooks processed, the
worker's uid not 0, the recovery volume path writable, SIGTERM -> exit 0. chroot isolation shares
the host's network, so the container reaches the stack and the handler on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools import devstack
from devtools.buildah import Buildah, ensure_base, ensure_tools, say
from devtools.handler_server import HandlerServer
from devtools.kafka import produce, read_topic
from devtools.webhooks import messages_value, payload, signed_envelope, text_message
from devtools.worker import ROOT

# WA_IMAGE_CACHE: a folder outside the checkout keeps the base warm for fresh clones (CI's).
CACHE = Path(os.environ.get("WA_IMAGE_CACHE") or ROOT / ".stack" / "image").resolve()
IMAGE = "localhost/wa-worker:image-test"
SECRET = "image-test-secret"
WEBHOOKS = 4  # two messages each
CONTAINER_PREFIX = "wa-image-test-"


class Failed(Exception):
    pass


def build(buildah: Buildah, base: str) -> None:
    # docker format: OCI images drop HEALTHCHECK, and the test runs the declared one.
    subprocess.run(
        buildah.argv(
            "bud",
            "--isolation",
            "chroot",
            "--format",
            "docker",
            "--quiet",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-t",
            IMAGE,
            str(ROOT),
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # The previous build's image, now untagged: vfs keeps full copies, so drop it.
    subprocess.run(buildah.argv("rmi", "--prune"), capture_output=True, check=False)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def worker_pid(runner: int) -> int | None:
    """The dataflow process under `buildah run` (the entrypoint execs it: container PID 1)."""
    for pid in descendants(runner):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"bytewax.run" in cmdline:
            return pid
    return None


def uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(u) for u in line.split()[1:]]
    raise Failed(f"no Uid line for pid {pid}")


def wait_for(
    what: str, check: Callable[[], bool], timeout_s: float, alive: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise Failed(f"the worker exited while waiting for {what}")
        if check():
            return
        time.sleep(1)
    raise Failed(f"{what}: not within {timeout_s:.0f}s")


class Container:
    """One working container of the image; `run` execs in it as the image's user."""

    def __init__(self, buildah: Buildah, env: dict[str, str]) -> None:
        self.buildah = buildah
        self.env = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
        self.name = buildah("from", "--name", f"{CONTAINER_PREFIX}{uuid.uuid4().hex[:8]}", IMAGE)

    def argv(self, *command: str) -> list[str]:
        return self.buildah.argv(
            "run", "--isolation", "chroot", *self.env, self.name, "--", *command
        )

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*command), capture_output=True, text=True, check=False)

    def remove(self) -> None:
        subprocess.run(self.buildah.argv("rm", self.name), capture_output=True, check=False)


def webhooks() -> list[tuple[bytes, bytes]]:
    records = []
    for i in range(WEBHOOKS):
        messages = [text_message(f"wamid.img{i}.{j}", f"3161000{i:04d}") for j in range(2)]
        body = payload(messages_value(messages=messages, wa_id=f"3161000{i:04d}"))
        records.append((f"img{i}".encode(), signed_envelope(f"img{i}", body, SECRET.encode())))
    return records


def check_image(buildah: Buildah, brokers: str, redis_url: str, log: Path) -> list[str]:
    """Run the image against the stack; the facts seen (raises Failed on the first miss)."""
    config = buildah.image_config(IMAGE)
    healthcheck = config["Healthcheck"]["Test"]
    if healthcheck[0] != "CMD" or "/livez" not in healthcheck:
        raise Failed(f"unexpected HEALTHCHECK {healthcheck}")
    if "/var/lib/wa-worker" not in (config.get("Volumes") or {}):
        raise Failed(f"no VOLUME /var/lib/wa-worker (volumes: {config.get('Volumes')})")
    run = uuid.uuid4().hex[:8]
    topics = [f"img{run}.inbound", f"img{run}.processed", f"img{run}.dlq"]
    devstack.create_topics(brokers, topics, partitions=2)
    port = devstack.free_port()
    facts = [f"user {config['User']}, entrypoint {config['Entrypoint']}"]
    with HandlerServer() as handler:
        container = Container(
            buildah,
            {
                "KAFKA_BROKERS": brokers,
                "REDIS_URL": redis_url,
                "REDIS_KEY_PREFIX": f"img{run}:",
                "KAFKA_GROUP_ID": f"img{run}",
                "KAFKA_INBOUND_TOPIC": topics[0],
                "KAFKA_PROCESSED_TOPIC": topics[1],
                "KAFKA_DLQ_TOPIC": topics[2],
                "HANDLER_URL": handler.url,
                "WA_APP_SECRET": SECRET,
                "HEALTH_PORT": str(port),  # the image's 4900 may be taken on this host
                "SNAPSHOT_INTERVAL_S": "1",
                "DRAIN_TIMEOUT_S": "10",
            },
        )
        try:
            facts += run_worker(container, config, healthcheck[1:], brokers, topics, handler, log)
            facts.append(contents(buildah, container))
        finally:
            container.remove()
    return facts


def run_worker(
    container: Container,
    config: dict[str, Any],
    healthcheck: list[str],
    brokers: str,
    topics: list[str],
    handler: HandlerServer,
    log: Path,
) -> list[str]:
    entrypoint = [str(a) for a in config["Entrypoint"]]
    with log.open("wb") as out:
        runner = subprocess.Popen(container.argv(*entrypoint), stdout=out, stderr=subprocess.STDOUT)

    def alive() -> bool:
        return runner.poll() is None

    try:
        facts = []
        for path in ("/livez", "/readyz"):
            probe = [*healthcheck[:-1], path]

            def healthy(probe: list[str] = probe) -> bool:
                return container.run(*probe).returncode == 0

            wait_for(f"{path} 200 via {' '.join(probe)}", healthy, 120, alive)
            facts.append(f"{path} 200 through {' '.join(probe)}")
        pid = worker_pid(runner.pid)
        if pid is None:
            raise Failed("no bytewax.run process under `buildah run`")
        if 0 in uids(pid):
            raise Failed(f"the worker runs as root (uids {uids(pid)})")
        facts.append(f"worker pid {pid} runs as uid {uids(pid)[0]}")
        # As the image's user; the partitions there were made by the entrypoint, as that user.
        volume = container.run(
            "sh", "-c", 'd=/var/lib/wa-worker; touch "$d/.w" && rm "$d/.w" && ls "$d/recovery"'
        )
        parts = [f for f in volume.stdout.split() if f.endswith(".sqlite3")]
        if volume.returncode != 0 or "part-0.sqlite3" not in parts:
            raise Failed(f"recovery volume not writable or empty: {volume.stderr or volume.stdout}")
        facts.append(f"/var/lib/wa-worker writable, {len(parts)} recovery partitions made there")
        sent = produce(brokers, topics[0], webhooks())
        processed = read_topic(
            brokers, topics[1], until=lambda rs: len(rs) >= 2 * sent, timeout_s=90
        )
        seen = f"{len(processed)} processed records, {len(handler.calls)} handler calls"
        if len(processed) != 2 * sent or len(handler.calls) < 2 * sent:
            raise Failed(f"{seen} for {2 * sent} events")
        facts.append(f"{sent} signed webhooks ({2 * sent} events) -> {seen}")
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)  # what the runtime sends to the container's PID 1
        code = runner.wait(60)
        if code != 0:
            raise Failed(f"exit {code} after SIGTERM")
        facts.append(f"SIGTERM -> exit 0 in {time.monotonic() - started:.1f}s")
        return facts
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(10)


def contents(buildah: Buildah, container: Container) -> str:
    size = buildah("images", "--format", "{{.Size}}", IMAGE)
    shown = container.run(
        "sh",
        "-c",
        "python --version; du -sh /opt/venv | cut -f1; pip list --format=freeze | wc -l;"
        " du -sh /usr 2>/dev/null | cut -f1",
    ).stdout.split()
    # "Python 3.11.x", the venv's size, its package count, /usr's size (the base's share)
    _, python, venv, packages, usr = [*shown, "?", "?", "?", "?", "?"][:5]
    return f"image {size}: Python {python}, /opt/venv {venv} ({packages} packages), /usr {usr}"


def remove_stale_containers(buildah: Buildah) -> None:
    """Containers an interrupted run left (each a full copy of the image on vfs)."""
    names = buildah("containers", "--format", "{{.ContainerName}}").split()
    for name in names:
        if name.startswith(CONTAINER_PREFIX):
            buildah("rm", name)


def main() -> int:
    started = time.monotonic()
    ensure_tools()
    CACHE.mkdir(parents=True, exist_ok=True)
    buildah = Buildah(CACHE)
    remove_stale_containers(buildah)
    base, how = ensure_base(buildah)
    say(f"base {base}: {how}")
    step = time.monotonic()
    build(buildah, base)
    say(f"built {IMAGE} in {time.monotonic() - step:.0f}s")
    kafka, redis_server = devstack.services(ROOT / ".stack" / "image-test")
    log = CACHE / "worker.log"
    try:
        step = time.monotonic()
        redis_port = devstack.start_redis(0, service=redis_server)
        kafka_port = devstack.start_kafka(0, service=kafka)
        brokers, redis_url = f"127.0.0.1:{kafka_port}", f"redis://127.0.0.1:{redis_port}/0"
        facts = check_image(buildah, brokers, redis_url, log)
        for fact in facts:
            say(f"ok: {fact}")
        say(f"ran the image in {time.monotonic() - step:.0f}s (stack start included)")
    except (Failed, RuntimeError, subprocess.CalledProcessError) as exc:
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        say(f"FAILED: {exc}\n--- worker log ({log}) ---\n{tail}")
        return 1
    finally:
        kafka.stop()
        redis_server.stop()
    say(f"passed in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
