"""A local multi-broker Kafka (KRaft) cluster, optionally SASL_SSL, for tests and the harness.

    cluster = start_cluster(base, brokers=3, security="sasl_ssl")
    cluster.env()                    # KAFKA_BROKERS, KAFKA_SECURITY_PROTOCOL, … for the worker
    cluster.kill(2)                  # kill -9 of node 2 (signal.SIGTERM for a clean stop)
    cluster.start_node(2)
    cluster.leader_of(topic, 0)      # node id leading that partition
    cluster.active_controller()      # node id of the KRaft quorum's leader

Every node is broker and controller (a 3-voter quorum), on 127.0.0.1 with free ports. Clients
use the CLIENT listener: PLAINTEXT, or SASL_SSL with SCRAM-SHA-512 over TLS. Brokers talk to
each other and to the quorum over PLAINTEXT listeners bound to loopback only (dev machine; no
certificates to pass between brokers). The SCRAM user is written when the storage is formatted
(`--add-scram`), the certificate is made with the JDK's keytool at first start. The state
(ports, user, password) lives in `<base>/cluster.json`, so a second `start_cluster` on the same
folder reuses a running cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.devstack import (
    _LOG4J,
    MAX_MESSAGE_BYTES,
    Service,
    _port_open,
    ensure_kafka_jars,
    free_port,
    java_command,
    new_cluster_id,
)

SECURITIES = ("plaintext", "sasl_ssl")
SCRAM_USER = "wa-worker"
MECHANISM = "SCRAM-SHA-512"
# Where the marker lives in a broker's command line: each node's own properties file.
_PROPS = "server.properties"

_NODE_PROPERTIES = """\
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
controller.listener.names=CONTROLLER
listeners=CLIENT://127.0.0.1:{port},INTERNAL://127.0.0.1:{iport},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=CLIENT://127.0.0.1:{port},INTERNAL://127.0.0.1:{iport}
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,CLIENT:{protocol}
log.dirs={data}
num.partitions=1
default.replication.factor={rf}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={rf}
offsets.topic.num.partitions=3
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=4
log.cleaner.dedupe.buffer.size=8388608
message.max.bytes={max_bytes}
replica.fetch.max.bytes={max_bytes}
auto.create.topics.enable=false
unclean.leader.election.enable=false
# A killed broker is fenced (its partitions led elsewhere) after this, not the default 9 s.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
replica.lag.time.max.ms=10000
"""

_SASL_SSL_PROPERTIES = """\
sasl.enabled.mechanisms={mechanism}
listener.name.client.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.client.ssl.keystore.type=PKCS12
listener.name.client.ssl.keystore.location={keystore}
listener.name.client.ssl.keystore.password={store_password}
listener.name.client.ssl.key.password={store_password}
"""


@dataclass(frozen=True)
class Node:
    node_id: int
    port: int  # the CLIENT listener
    iport: int  # INTERNAL (broker to broker)
    cport: int  # CONTROLLER (the quorum)
    service: Service


class Cluster:
    def __init__(self, base: Path, state: dict[str, Any]) -> None:
        self.base = base
        self.state = state
        self.security: str = state["security"]
        self.nodes = {
            int(n["node_id"]): Node(
                int(n["node_id"]),
                int(n["port"]),
                int(n["iport"]),
                int(n["cport"]),
                _service(base, int(n["node_id"])),
            )
            for n in state["nodes"]
        }

    # What clients need

    @property
    def brokers(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes.values())

    @property
    def ca_location(self) -> Path:
        return self.base / "tls" / "ca.pem"

    def env(self, password: str | None = None) -> dict[str, str]:
        """The worker's settings for this cluster (`password` overrides the right one)."""
        env = {"KAFKA_BROKERS": self.brokers}
        if self.security == "sasl_ssl":
            env |= {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": MECHANISM,
                "KAFKA_SASL_USERNAME": SCRAM_USER,
                "KAFKA_SASL_PASSWORD": password or self.state["password"],
                "KAFKA_SSL_CA_LOCATION": str(self.ca_location),
            }
        return env

    def client_config(self) -> dict[str, Any]:
        """librdkafka options for the tests' and harness's own clients."""
        return {
            name[len("KAFKA_") :].lower().replace("_", "."): value
            for name, value in self.env().items()
            if name != "KAFKA_BROKERS"
        } | {"bootstrap.servers": self.brokers}

    # Faults

    def kill(self, node_id: int, sig: int = signal.SIGKILL, timeout_s: float = 60) -> None:
        """Send `sig` to the node and wait until it has exited (SIGTERM: a controlled shutdown,
        leadership moved away first)."""
        svc = self.nodes[node_id].service
        pid = svc.pid()
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while svc.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if svc.pid() is not None:
            os.kill(pid, signal.SIGKILL)
            while svc.pid() is not None:
                time.sleep(0.05)
        svc.pid_file.unlink(missing_ok=True)

    def start_node(self, node_id: int, timeout_s: float = 120, wait: bool = True) -> None:
        """Start the node unless it runs; with `wait`, until the cluster lists it again."""
        node = self.nodes[node_id]
        proc = _spawn(node) if node.service.pid() is None else None
        if not wait:
            return
        deadline = time.monotonic() + timeout_s
        # Listed alone is not enough: a node killed a moment ago is listed until it is fenced.
        while not _port_open(node.port) or node_id not in self.live_brokers(timeout_s=2):
            # The child's own exit status when this call started it: a CI run once read the
            # pid file as "not running" just after a restart whose broker then ran on.
            exited = proc.poll() is not None if proc is not None else node.service.pid() is None
            if exited:
                status = f" with status {proc.returncode}" if proc is not None else ""
                raise RuntimeError(
                    f"Kafka node {node_id} exited{status}:\n{node.service.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka node {node_id} not back:\n{node.service.log_tail()}")
            time.sleep(0.25)

    def running(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.service.pid() is not None]

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to every node at once (one by one, the last would wait for a quorum that
        left), SIGKILL to any still running after `timeout_s`."""
        running = {i: self.nodes[i].service.pid() for i in self.running()}
        for pid in running.values():
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        for node_id in self.running():
            self.kill(node_id)
        for node_id in running:
            self.nodes[node_id].service.pid_file.unlink(missing_ok=True)

    # Who leads what

    def _admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient({**self.client_config(), "log_level": 0})

    def live_brokers(self, timeout_s: float = 5) -> set[int]:
        try:
            return set(self._admin().list_topics(timeout=timeout_s).brokers)
        except Exception:  # noqa: BLE001  (none answers yet)
            return set()

    def leaders(self, topic: str, timeout_s: float = 10) -> dict[int, int]:
        """Partition → leader node id (-1 while it has none)."""
        admin = self._admin()
        deadline = time.monotonic() + timeout_s
        while True:
            meta = admin.list_topics(topic, timeout=timeout_s).topics[topic]
            # A broker that has not seen a new topic's metadata yet lists no partitions.
            if meta.partitions or time.monotonic() > deadline:
                return {p: int(info.leader) for p, info in meta.partitions.items()}
            time.sleep(0.2)

    def leader_of(self, topic: str, partition: int = 0) -> int:
        return self.leaders(topic)[partition]

    def active_controller(self) -> int:
        """The quorum leader, from the newest `quorum-state` a running node wrote. (A KRaft
        broker's metadata names a random broker as 'controller', so clients cannot tell.)"""
        best: tuple[int, int] | None = None
        for node_id in self.running():
            path = (
                self.nodes[node_id].service.dir / "data" / "__cluster_metadata-0" / "quorum-state"
            )
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            entry = (int(data.get("leaderEpoch", -1)), int(data.get("leaderId", -1)))
            if entry[1] >= 0 and (best is None or entry > best):
                best = entry
        if best is None:
            raise RuntimeError("no running node knows the quorum leader")
        return best[1]

    def wait_for_leaders(self, topics: list[str], timeout_s: float = 60) -> float:
        """Until every partition of the topics is led by a running node; the seconds it took."""
        started = time.monotonic()
        while True:
            running = set(self.running())
            try:
                if all(set(self.leaders(t, 5).values()) <= running for t in topics):
                    return time.monotonic() - started
            except Exception:  # noqa: BLE001  (metadata unavailable mid-election)
                pass
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"partitions of {topics} without a running leader")
            time.sleep(0.2)

    def create_topics(self, names: list[str], partitions: int = 3) -> None:
        """Topics as `topics create` makes them for this cluster (RF 3, min.insync.replicas 2)."""
        from wa_worker.cli.topics import TopicSpec, default_replication, ensure_topics

        rf, min_isr = default_replication(len(self.nodes))
        config = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
        if min_isr:
            config["min.insync.replicas"] = str(min_isr)
        ensure_topics(self.client_config(), [TopicSpec(n, partitions, rf, config) for n in names])


def _service(base: Path, node_id: int) -> Service:
    name = f"kafka-{node_id}"
    return Service(name, str(base / name / _PROPS), base)


def _java(lib: Path, log4j: Path, heap: str = "384m") -> list[str]:
    return java_command(lib, log4j, "128m", heap)


def _spawn(node: Node) -> subprocess.Popen[bytes]:
    svc = node.service
    lib = ensure_kafka_jars()
    return svc.spawn(
        [*_java(lib, svc.dir / "log4j.properties"), "kafka.Kafka", str(svc.dir / _PROPS)],
        node.port,
    )


def _make_keystore(tls: Path, store_password: str) -> Path:
    """A self-signed certificate for 127.0.0.1 (also the clients' CA file), by keytool."""
    keystore = tls / "broker.p12"
    if keystore.exists() and (tls / "ca.pem").exists():
        return keystore
    tls.mkdir(parents=True, exist_ok=True)
    keystore.unlink(missing_ok=True)
    common = ["-keystore", str(keystore), "-storetype", "PKCS12", "-storepass", store_password]
    subprocess.run(
        [
            "keytool",
            "-genkeypair",
            "-alias",
            "broker",
            "-keyalg",
            "RSA",
            "-keysize",
            "2048",
            "-validity",
            "3650",
            "-dname",
            "CN=127.0.0.1",
            "-ext",
            "SAN=ip:127.0.0.1,dns:localhost",
            "-ext",
            "BC=ca:true",
            "-keypass",
            store_password,
            *common,
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "keytool",
            "-exportcert",
            "-rfc",
            "-alias",
            "broker",
            "-file",
            str(tls / "ca.pem"),
            *common,
        ],
        check=True,
        capture_output=True,
    )
    return keystore


def _new_state(base: Path, brokers: int, security: str, first_port: int) -> dict[str, Any]:
    nodes = []
    taken: set[int] = set()

    def fresh_port() -> int:
        # The OS may hand out a port already picked here (nothing listens on it yet), such as
        # a wanted client port: Kafka then refuses two listeners on one port.
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    for i in range(1, brokers + 1):
        wanted = first_port + i - 1 if first_port else 0
        if wanted and not _port_open(wanted) and wanted not in taken:
            taken.add(wanted)
            port = wanted
        else:
            port = fresh_port()
        nodes.append({"node_id": i, "port": port, "iport": fresh_port(), "cport": fresh_port()})
    return {
        "security": security,
        "cluster_id": new_cluster_id(),
        "password": secrets.token_urlsafe(18),
        "store_password": secrets.token_urlsafe(18),
        "nodes": nodes,
    }


def _load_state(base: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((base / "cluster.json").read_text()))
    except (OSError, ValueError):
        return None


def start_cluster(
    base: Path,
    brokers: int = 3,
    security: str = "plaintext",
    first_port: int = 0,
    timeout_s: float = 180,
) -> Cluster:
    """Start (or reuse) the cluster in `base`; return once every broker is registered."""
    if security not in SECURITIES:
        raise ValueError(f"security must be one of {SECURITIES}, not {security!r}")
    base = base.resolve()
    state = _load_state(base)
    if state is not None and (state["security"] != security or len(state["nodes"]) != brokers):
        cluster = Cluster(base, state)
        if cluster.running():
            raise RuntimeError(
                f"{base} runs a {len(state['nodes'])}-broker {state['security']} cluster: "
                "stop it first (devstack down)"
            )
        state = None
    if state is None:
        # A new cluster id needs fresh storage: the old data would not join it.
        for old in base.glob("kafka-*/data"):
            _rmtree(old)
        state = _new_state(base, brokers, security, first_port)
        base.mkdir(parents=True, exist_ok=True)
        (base / "cluster.json").touch(mode=0o600)
        (base / "cluster.json").write_text(json.dumps(state, indent=2))
    cluster = Cluster(base, state)
    stopped = [n for n in cluster.nodes.values() if n.service.pid() is None]
    if not stopped:
        return cluster
    _write_configs(cluster)
    _format(cluster, stopped)
    procs = {n.node_id: _spawn(n) for n in stopped}
    deadline = time.monotonic() + timeout_s
    while len(cluster.live_brokers(timeout_s=2)) < brokers:
        for node_id, proc in procs.items():
            if proc.poll() is not None:
                tail = cluster.nodes[node_id].service.log_tail()
                raise RuntimeError(f"Kafka node {node_id} exited at start-up:\n{tail}")
        if time.monotonic() > deadline:
            tails = "\n".join(n.service.log_tail(10) for n in stopped)
            raise RuntimeError(f"Kafka cluster not ready after {timeout_s}s:\n{tails}")
        time.sleep(0.5)
    return cluster


def _write_configs(cluster: Cluster) -> None:
    state = cluster.state
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.cport}" for n in cluster.nodes.values())
    rf, min_isr = min(3, len(cluster.nodes)), max(1, min(3, len(cluster.nodes)) - 1)
    keystore = None
    if cluster.security == "sasl_ssl":
        keystore = _make_keystore(cluster.base / "tls", state["store_password"])
    for node in cluster.nodes.values():
        svc = node.service
        svc.dir.mkdir(parents=True, exist_ok=True)
        props = _NODE_PROPERTIES.format(
            node_id=node.node_id,
            voters=voters,
            port=node.port,
            iport=node.iport,
            cport=node.cport,
            protocol="SASL_SSL" if keystore else "PLAINTEXT",
            data=svc.dir / "data",
            rf=rf,
            min_isr=min_isr,
            max_bytes=MAX_MESSAGE_BYTES,
        )
        if keystore:
            props += _SASL_SSL_PROPERTIES.format(
                mechanism=MECHANISM, keystore=keystore, store_password=state["store_password"]
            )
        path = svc.dir / _PROPS
        path.touch(mode=0o600)  # it holds the keystore's password
        path.write_text(props)
        (svc.dir / "log4j.properties").write_text(_LOG4J)


def _format(cluster: Cluster, nodes: list[Node]) -> None:
    """Format each node's storage (once: -g keeps formatted data), with the SCRAM user."""
    lib = ensure_kafka_jars()
    scram = []
    if cluster.security == "sasl_ssl":
        password = cluster.state["password"]
        scram = ["--add-scram", f"{MECHANISM}=[name={SCRAM_USER},password={password}]"]
    procs = []
    for node in nodes:
        svc = node.service
        argv = [
            *_java(lib, svc.dir / "log4j.properties", "256m"),
            "kafka.tools.StorageTool",
            "format",
            "-g",
            "-t",
            cluster.state["cluster_id"],
            "-c",
            str(svc.dir / _PROPS),
            *scram,
        ]
        procs.append(
            (node, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        )
    for node, proc in procs:
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(
                f"formatting Kafka node {node.node_id} failed:\n{out.decode()[-2000:]}"
            )


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def open_cluster(base: Path) -> Cluster | None:
    """The cluster recorded in `base`, running or not (None when there is none)."""
    state = _load_state(base.resolve())
    return Cluster(base.resolve(), state) if state else None


# `scripts/devstack up --brokers N --security S` (hooks called by devtools/devstack.py)


def devstack_base(state_dir: Path) -> Path:
    return state_dir / "kafka-cluster"


def devstack_up(
    state_dir: Path,
    brokers: int,
    security: str,
    kafka_port: int,
    partitions: int,
    topics: list[str],
) -> dict[str, str]:
    """Start the cluster, create the topics (the worker's three by default); the env lines."""
    cluster = start_cluster(devstack_base(state_dir), brokers, security, kafka_port)
    if topics:
        cluster.create_topics(topics, partitions)
    else:
        from wa_worker.cli.topics import (
            DLQ_RETENTION_DAYS,
            RETENTION_DAYS,
            default_replication,
            ensure_topics,
            worker_topics,
        )
        from wa_worker.settings import load_settings

        settings = load_settings(kafka_brokers=cluster.brokers)
        rf, _ = default_replication(brokers)
        specs = worker_topics(settings, partitions, rf, RETENTION_DAYS, DLQ_RETENTION_DAYS)
        ensure_topics(cluster.client_config(), specs)
    return cluster.env()


def devstack_services(state_dir: Path) -> list[Service]:
    cluster = open_cluster(devstack_base(state_dir))
    return [n.service for n in cluster.nodes.values()] if cluster else []
