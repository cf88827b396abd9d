"""A real local Kafka (KRaft, from Maven Central jars) and Redis (Debian's redis-server).

    python -m devtools.devstack up      # idempotent; prints KAFKA_BROKERS=… and REDIS_URL=…
    python -m devtools.devstack status
    python -m devtools.devstack down

Everything lives under a state folder (`.stack/` by default, `DEVSTACK_DIR` to change): the jar
cache (`kafka/lib`, reused), data, logs and pid files. Processes are stopped by their recorded pid,
after checking that the pid still runs what we started, never by name.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "scripts" / "kafka" / "pom.xml"
MAX_MESSAGE_BYTES = 5_242_880

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _state_dir() -> Path:
    return Path(os.environ.get("DEVSTACK_DIR", ROOT / ".stack")).resolve()


def _jar_dir() -> Path:
    # Jars are shared by every state folder: resolving them is the slow part.
    return Path(os.environ.get("DEVSTACK_JARS", ROOT / ".stack" / "kafka" / "lib")).resolve()


def new_cluster_id() -> str:
    """A KRaft cluster id, as Kafka's own `Uuid.randomUuid()` makes them: never starting with
    '-', which the storage tool would read as an option (1 start-up in 64 failed so)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def java_command(lib: Path, log4j: Path, heap_min: str, heap_max: str) -> list[str]:
    """`java …` for a Kafka tool or server from the resolved jars (also devtools.kafka_cluster)."""
    return [
        "java",
        f"-Xms{heap_min}",
        f"-Xmx{heap_max}",
        "-XX:+UseG1GC",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{log4j}",
        "-cp",
        f"{lib}/*",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int, marker: str) -> bool:
    """Is `pid` running, and is it still the program we started (not a recycled pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text().split()
    return marker in cmdline and stat[2] != "Z"


@dataclass
class Service:
    name: str
    marker: str  # a string in the process's command line that proves it is ours
    base: Path | None = None  # its state folder's parent; DEVSTACK_DIR (or .stack) when None

    @property
    def dir(self) -> Path:
        return (self.base or _state_dir()) / self.name

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def port_file(self) -> Path:
        return self.dir / "port"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid, self.marker) else None

    def port(self) -> int | None:
        try:
            return int(self.port_file.read_text())
        except (OSError, ValueError):
            return None

    def choose_port(self, wanted: int) -> int:
        port = self.port()
        if port is None or _port_open(port):
            port = wanted if wanted and not _port_open(wanted) else free_port()
        return port

    def spawn(self, argv: list[str], port: int) -> subprocess.Popen[bytes]:
        self.dir.mkdir(parents=True, exist_ok=True)
        log = (self.dir / "out.log").open("ab")
        # A session of its own: the service outlives this command and ignores its terminal's ^C.
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True
        )
        self.pid_file.write_text(str(proc.pid))
        self.port_file.write_text(str(port))
        return proc

    def stop(self, timeout_s: float = 30.0) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid, self.marker):
            time.sleep(0.1)
        if _alive(pid, self.marker):
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(
                (self.dir / "out.log").read_text(errors="replace").splitlines()[-lines:]
            )
        except OSError:
            return "(no log)"


KAFKA = Service("kafka", "kafka.Kafka")
REDIS = Service("redis", "redis-server")


def services(base: Path) -> tuple[Service, Service]:
    """Kafka and Redis of a stack living in `base` (tests and harnesses run their own)."""
    return Service("kafka", "kafka.Kafka", base), Service("redis", "redis-server", base)


# Redis


def ensure_redis_installed() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    _say("installing redis-server from Debian's packages")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    return found


def start_redis(
    wanted_port: int = 6379, service: Service | None = None, extra_args: tuple[str, ...] = ()
) -> int:
    svc = service or REDIS
    if svc.pid() is not None and (port := svc.port()):
        return port
    binary = ensure_redis_installed()
    port = svc.choose_port(wanted_port)
    svc.dir.mkdir(parents=True, exist_ok=True)
    # No snapshots or AOF: test data needs no disk. A dump.rdb left by `SHUTDOWN SAVE` is
    # loaded on start, which lets fault tests restart Redis with or without its data.
    proc = svc.spawn(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(svc.dir),
            *extra_args,
        ],
        port,
    )
    _wait(lambda: _redis_ping(port), 20, proc, svc, "Redis")
    return port


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(16)
            return reply.startswith((b"+PONG", b"-NOAUTH"))  # answering is ready enough
    except OSError:
        return False


# Kafka


def ensure_kafka_jars() -> Path:
    lib = _jar_dir()
    if lib.is_dir() and any(lib.glob("kafka_2.13-*.jar")):
        return lib
    _say(f"resolving Apache Kafka from Maven Central into {lib}")
    subprocess.run(
        [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(POM),
            "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies",
            f"-DoutputDirectory={lib}",
            "-DincludeScope=runtime",
        ],
        check=True,
    )
    return lib


_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{cport}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
log.cleaner.dedupe.buffer.size=8388608
message.max.bytes={max_bytes}
replica.fetch.max.bytes={max_bytes}
auto.create.topics.enable=false
"""

_LOG4J = """\
log4j.rootLogger=INFO, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.state.change.logger=WARN
"""


def start_kafka(
    wanted_port: int = 9092, timeout_s: float = 120, service: Service | None = None
) -> int:
    svc = service or KAFKA
    if svc.pid() is not None and (port := svc.port()):
        return port
    lib = ensure_kafka_jars()
    port = svc.choose_port(wanted_port)
    cport = free_port()
    data = svc.dir / "data"
    svc.dir.mkdir(parents=True, exist_ok=True)
    props = svc.dir / "server.properties"
    props.write_text(
        _SERVER_PROPERTIES.format(port=port, cport=cport, data=data, max_bytes=MAX_MESSAGE_BYTES)
    )
    log4j = svc.dir / "log4j.properties"
    log4j.write_text(_LOG4J)
    java = java_command(lib, log4j, "256m", "512m")
    cluster_file = svc.dir / "cluster.id"
    if not cluster_file.exists():
        cluster_file.write_text(new_cluster_id())
    # -g: a data folder formatted by an earlier run is kept (topics survive restarts).
    subprocess.run(
        [
            *java,
            "kafka.tools.StorageTool",
            "format",
            "-g",
            "-t",
            cluster_file.read_text(),
            "-c",
            str(props),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    proc = svc.spawn([*java, "kafka.Kafka", str(props)], port)
    _wait(lambda: _kafka_ready(port), timeout_s, proc, svc, "Kafka")
    return port


def _kafka_ready(port: int) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0}).list_topics(
            timeout=1
        )
    except Exception:  # noqa: BLE001  (not ready yet)
        return False
    return bool(md.brokers)


def create_topics(brokers: str, names: list[str], partitions: int, timeout_s: float = 30) -> None:
    """Create missing topics sized for Meta's 3 MB payloads; wait until each has a leader."""
    from wa_worker.cli.topics import TopicSpec, ensure_topics

    config = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    specs = [TopicSpec(n, partitions, 1, config) for n in names]
    ensure_topics({"bootstrap.servers": brokers}, specs, timeout_s)


def _create_worker_topics(brokers: str, partitions: int) -> None:
    from wa_worker.cli.topics import (
        DLQ_RETENTION_DAYS,
        RETENTION_DAYS,
        ensure_topics,
        worker_topics,
    )
    from wa_worker.settings import load_settings

    settings = load_settings(kafka_brokers=brokers)
    specs = worker_topics(settings, partitions, 1, RETENTION_DAYS, DLQ_RETENTION_DAYS)
    ensure_topics(settings.admin_config(), specs)


def _wait(
    ready: Callable[[], bool],
    timeout_s: float,
    proc: subprocess.Popen[bytes],
    service: Service,
    label: str,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{label} exited at start-up:\n{service.log_tail()}")
        if ready():
            return
        time.sleep(0.25)
    raise RuntimeError(f"{label} not ready after {timeout_s}s:\n{service.log_tail()}")


def _say(message: str) -> None:
    print(f"devstack: {message}", file=sys.stderr)


@app.command()
def up(
    kafka_port: int = typer.Option(9092, help="0 picks a free port"),
    redis_port: int = typer.Option(6379, help="0 picks a free port"),
    partitions: int = typer.Option(3, help="partitions of each created topic"),
    topic: list[str] = typer.Option(
        [], help="topics to create (repeatable; default: the settings' three, as `topics create`)"
    ),
    redis: str = typer.Option("standalone", help="standalone, cluster or sentinel"),
    redis_tls: bool = typer.Option(False, help="TLS, client certificate and ACL user"),
    brokers: int = typer.Option(1, min=1, max=9, help="Kafka brokers (KRaft, 3 voters at most)"),
    security: str = typer.Option("plaintext", help="client listener: plaintext or sasl_ssl"),
) -> None:
    """Start what is not running; print the KAFKA_* and REDIS_* lines for `eval`."""
    started = time.monotonic()
    if redis not in ("standalone", "cluster", "sentinel"):
        raise typer.BadParameter("standalone, cluster or sentinel", param_hint="--redis")
    if security not in ("plaintext", "sasl_ssl"):
        raise typer.BadParameter("plaintext or sasl_ssl", param_hint="--security")
    topology = None
    if redis != "standalone" or redis_tls:
        from devtools.redis_topologies import start_named

        topology = start_named(_state_dir(), redis, redis_tls)
        rport = topology.nodes[next(iter(topology.nodes))].port
    else:
        rport = start_redis(redis_port)
    redis_lines = (
        topology.lines() if topology is not None else [f"REDIS_URL=redis://127.0.0.1:{rport}/0"]
    )
    if brokers > 1 or security != "plaintext":
        # A cluster (and/or SASL_SSL) lives in a module of its own: devtools/kafka_cluster.py.
        from devtools import kafka_cluster

        env = kafka_cluster.devstack_up(
            _state_dir(), brokers, security, kafka_port, partitions, topic
        )
        _say(
            f"{brokers} Kafka brokers ({security}), Redis on 127.0.0.1:{rport} "
            f"(ready in {time.monotonic() - started:.1f}s; logs in {_state_dir()})"
        )
        for name, value in env.items():
            print(f"{name}={value}")
        print("\n".join(redis_lines))
        return
    kport = start_kafka(kafka_port)
    if topic:
        create_topics(f"127.0.0.1:{kport}", topic, partitions)
    else:
        _create_worker_topics(f"127.0.0.1:{kport}", partitions)
    _say(
        f"Kafka on 127.0.0.1:{kport}, Redis on 127.0.0.1:{rport} "
        f"(ready in {time.monotonic() - started:.1f}s; logs in {_state_dir()})"
    )
    print(f"KAFKA_BROKERS=127.0.0.1:{kport}")
    print("\n".join(redis_lines))


def _services() -> list[Service]:
    """Kafka (or the cluster's brokers when `up --brokers N` made one), and Redis (or the
    nodes of a Redis topology when `up --redis …` made one), by their recorded pids."""
    from devtools.kafka_cluster import devstack_services
    from devtools.redis_topologies import recorded_nodes

    brokers = devstack_services(_state_dir())
    kafka = brokers if brokers and KAFKA.pid() is None else [KAFKA, *brokers]
    topology = recorded_nodes(_state_dir())
    plain = [REDIS] if REDIS.pid() is not None or not topology else []
    return [*kafka, *plain, *topology]


@app.command()
def status() -> None:
    """Show what runs; exit 1 if something is down (the plain Redis may be replaced by a
    topology: `up --redis cluster`)."""
    down_count = 0
    for service in _services():
        pid = service.pid()
        state = f"running (pid {pid}, port {service.port()})" if pid else "stopped"
        down_count += pid is None
        print(f"{service.name}: {state}")
    raise typer.Exit(1 if down_count else 0)


@app.command()
def down() -> None:
    """Stop Kafka, Redis and the Redis topologies by their recorded pids."""
    for service in _services():
        print(f"{service.name}: {'stopped' if service.stop() else 'was not running'}")


if __name__ == "__main__":
    app()
