"""Redis as teams run it, on loopback: a Cluster, a Sentinel set, TLS with an ACL user.

    start_redis_cluster(base, replicas=1, tls=None) -> Topology   # 3 primaries (+ replicas)
    start_redis_sentinel(base) -> Topology        # a primary, a replica, three sentinels
    start_redis_tls(base) -> Topology             # TLS only, client certificate, ACL user
    sentinel_primary(topology) -> Node            # the node the sentinels name primary now
    make_certificates(folder) -> Certificates     # CA, server, client cert (devtools.redis_certs)

Each returns a `Topology`: `env` holds the REDIS_* settings a client needs (print them, or pass
them to a worker), `nodes` the processes by name (`primary`, `replica`, `sentinel-1`, or
`node-1`…), each with `stop()` (SIGTERM) and `kill()` (SIGKILL) by its recorded pid, and
`restart()` with its first arguments; `topology.stop()` stops them all. Every node lives in
`base/<topology>/<node>` (config, data, log, pid, port) on a free port; a second call while
the nodes run returns the running topology. `scripts/devstack up --redis cluster|sentinel` and
`--redis-tls` call these; tests (tests/conftest.py) and the harness call them directly.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from devtools.devstack import Service, _alive, ensure_redis_installed, free_port
from devtools.redis_certs import ACL_USER, Certificates, make_certificates, run

SENTINEL_MASTER = "mymaster"
CLUSTER_NODE_TIMEOUT_MS = 2000  # a dead primary is noticed (and its replica promoted) in seconds


@dataclass
class Node:
    """One redis-server or redis-sentinel process of a topology."""

    service: Service
    argv: list[str]

    @property
    def port(self) -> int:
        port = self.service.port()
        assert port is not None, f"{self.service.name} has no recorded port"
        return port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.service.pid() is not None

    def stop(self) -> bool:
        return self.service.stop(timeout_s=10)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, no final write."""
        if (pid := self.service.pid()) is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _alive(pid, self.service.marker) and time.monotonic() < deadline:
                time.sleep(0.05)

    def restart(self, ready: Callable[[], bool] | None = None, timeout_s: float = 20) -> None:
        self.stop()
        proc = self.service.spawn(self.argv, self.port)
        _wait_for(ready or (lambda: _answers(self.port)), timeout_s, proc, self.service)


@dataclass
class Topology:
    name: str
    env: dict[str, str]
    nodes: dict[str, Node] = field(default_factory=dict)
    certificates: Certificates | None = None

    def stop(self) -> None:
        for node in reversed(self.nodes.values()):
            node.stop()

    def lines(self) -> list[str]:
        """`NAME=value` lines for `eval` (a shell reads them as settings)."""
        return [f"{name}={value}" for name, value in self.env.items()]


# Processes


def _redis_argv(binary: str, port: int, folder: Path, tls: Certificates | None) -> list[str]:
    listen = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
    return [
        binary,
        *listen,
        *(tls.server_args() if tls else ()),
        *("--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"),
        *("--dir", str(folder)),
    ]


def _node(base: Path, topology: str, name: str, extra: list[str], tls: Certificates | None) -> Node:
    service = Service(f"{topology}/{name}", "redis-server", base)
    port = service.port() if service.pid() is not None else None
    port = port or (_cluster_port() if "--cluster-enabled" in extra else free_port())
    argv = [*_redis_argv(ensure_redis_installed(), port, service.dir, tls), *extra]
    node = Node(service, argv)
    if service.pid() is None:
        service.dir.mkdir(parents=True, exist_ok=True)
        # A fresh start is a fresh node: an old nodes.conf would keep the old cluster's slots
        # and ports (`Node.restart` keeps it: a restarted node rejoins its cluster).
        (service.dir / "nodes.conf").unlink(missing_ok=True)
        proc = service.spawn(argv, port)
        _wait_for(lambda: _answers(port, tls), 20, proc, service)
    return node


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, so at most 55535."""
    for _ in range(200):
        port = random.randint(20_000, 55_535)
        if _bindable(port) and _bindable(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _client(port: int, tls: Certificates | None = None, **kwargs: Any) -> redis.Redis:
    extra: dict[str, Any] = {"ssl": True, **tls.client_kwargs()} if tls else {}
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2, **extra, **kwargs)


def _answers(port: int, tls: Certificates | None = None, **kwargs: Any) -> bool:
    client = _client(port, tls, **kwargs)
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return True  # answering is ready enough
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait_for(
    ready: Callable[[], bool],
    timeout_s: float,
    proc: subprocess.Popen[bytes] | None,
    service: Service,
    what: str = "",
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited at start-up:\n{service.log_tail()}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"{service.name}: {what or 'not ready'} after {timeout_s}s:\n{service.log_tail()}"
    )


# Topologies


def start_redis_cluster(
    base: Path, replicas: int = 1, tls: Certificates | None = None, name: str = ""
) -> Topology:
    """Three primaries with `replicas` replicas each, `redis-cli --cluster create`, then wait
    until every node says cluster_state:ok. `tls`: every node TLS-only, the bus too."""
    base = base.resolve()  # the nodes run in their own folders: paths must not be relative
    topology = name or ("redis-cluster-tls" if tls else "redis-cluster")
    count = 3 * (1 + replicas)
    extra = [
        *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
        *("--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS)),
        *(("--tls-cluster", "yes", "--tls-replication", "yes") if tls else ()),
    ]
    nodes = {
        f"node-{i}": _node(base, topology, f"node-{i}", extra, tls) for i in range(1, count + 1)
    }
    first = nodes["node-1"]
    if not _cluster_ok(first.port, tls, count):
        _create_cluster(list(nodes.values()), replicas, tls)
        _wait_for(lambda: all(_cluster_ok(n.port, tls, count) for n in nodes.values()), 60,
                  None, first.service, "cluster_state is not ok")  # fmt: skip
    scheme = "rediss" if tls else "redis"
    env = {"REDIS_URL": f"{scheme}://{first.address}/0", "REDIS_MODE": "cluster"}
    return Topology(topology, env | (tls.env() if tls else {}), nodes, tls)


def _create_cluster(nodes: list[Node], replicas: int, tls: Certificates | None) -> None:
    # A half-made cluster (an interrupted start) is made again from empty: primaries emptied
    # (replicas refuse FLUSHALL), then every node forgets the others.
    for command in (("FLUSHALL",), ("CLUSTER", "RESET", "HARD")):
        for node in nodes:
            client = _client(node.port, tls)
            try:
                client.execute_command(*command)  # type: ignore[no-untyped-call]
            except redis.ReadOnlyError:
                pass
            finally:
                client.close()
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    tls_args = ["--tls", "--cacert", str(tls.ca), "--cert", str(tls.client_cert),
                "--key", str(tls.client_key)] if tls else []  # fmt: skip
    run(cli, *tls_args, "--cluster", "create", *(n.address for n in nodes),
         "--cluster-replicas", str(replicas), "--cluster-yes")  # fmt: skip


def _cluster_ok(port: int, tls: Certificates | None, count: int) -> bool:
    client = _client(port, tls)
    try:
        info = _lines(client.execute_command("CLUSTER", "INFO"))  # type: ignore[no-untyped-call]
        nodes = _lines(client.execute_command("CLUSTER", "NODES"))  # type: ignore[no-untyped-call]
    except redis.RedisError:
        return False
    finally:
        client.close()
    connected = [line for line in nodes if line.split()[7:8] == ["connected"]]
    return "cluster_state:ok" in info and len(connected) == count


def _lines(reply: Any) -> list[str]:
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return text.splitlines()


def start_redis_sentinel(base: Path) -> Topology:
    """A primary, its replica and three sentinels watching it (quorum 2); returns once every
    sentinel knows the replica and the other sentinels, so SENTINEL FAILOVER works at once."""
    base = base.resolve()  # the nodes run in their own folders: paths must not be relative
    topology = "redis-sentinel"
    primary = _node(base, topology, "primary", [], None)
    replica = _node(
        base, topology, "replica", ["--replicaof", "127.0.0.1", str(primary.port)], None
    )
    nodes = {"primary": primary, "replica": replica}
    for i in (1, 2, 3):
        nodes[f"sentinel-{i}"] = _sentinel(base, topology, f"sentinel-{i}", primary.port)
    sentinels = [n for key, n in nodes.items() if key.startswith("sentinel")]
    for sentinel in sentinels:
        _wait_for(_sees_all(sentinel.port), 60, None, sentinel.service,
                  "the sentinels do not see each other and the replica")  # fmt: skip
    env = {
        "REDIS_MODE": "sentinel",
        "REDIS_SENTINELS": ",".join(s.address for s in sentinels),
        "REDIS_SENTINEL_MASTER": SENTINEL_MASTER,
        "REDIS_URL": "redis://127.0.0.1/0",  # the host is Sentinel's to say; db and user apply
    }
    return Topology(topology, env, nodes)


_SENTINEL_CONF = """\
port {port}
bind 127.0.0.1
dir {dir}
sentinel monitor {master} 127.0.0.1 {primary} 2
sentinel down-after-milliseconds {master} 1000
sentinel failover-timeout {master} 5000
sentinel parallel-syncs {master} 1
"""


def _sentinel(base: Path, topology: str, name: str, primary_port: int) -> Node:
    service = Service(f"{topology}/{name}", "redis-sentinel", base)
    port = (service.port() if service.pid() is not None else None) or free_port()
    conf = service.dir / "sentinel.conf"
    node = Node(service, [_sentinel_binary(), str(conf)])
    if service.pid() is None:
        service.dir.mkdir(parents=True, exist_ok=True)
        # Sentinel rewrites its config (known replicas, peers, epochs): a fresh one each start.
        conf.write_text(
            _SENTINEL_CONF.format(
                port=port, dir=service.dir, master=SENTINEL_MASTER, primary=primary_port
            )
        )
        proc = service.spawn(node.argv, port)
        _wait_for(lambda: _answers(port), 20, proc, service)
    return node


def _sentinel_binary() -> str:
    found = shutil.which("redis-sentinel")
    if found:
        return found
    raise RuntimeError(
        "redis-sentinel is missing: run scripts/bootstrap (apt-get install redis-sentinel)"
    )


def _sees_all(port: int) -> Callable[[], bool]:
    return lambda: _sentinel_sees_all(port)


def _sentinel_sees_all(port: int) -> bool:
    client = _client(port)
    try:
        state = cast(dict[str, Any], client.sentinel_master(SENTINEL_MASTER))
    except redis.RedisError:
        return False
    finally:
        client.close()
    return int(state.get("num-other-sentinels", 0)) >= 2 and int(state.get("num-slaves", 0)) >= 1


def sentinel_primary(topology: Topology) -> Node:
    """The node the sentinels name as primary now (it changes with each failover)."""
    sentinel = next(n for key, n in topology.nodes.items() if key.startswith("sentinel"))
    client = _client(sentinel.port)
    try:
        _, port = cast(tuple[str, int], client.sentinel_get_master_addr_by_name(SENTINEL_MASTER))
    finally:
        client.close()
    return next(n for n in topology.nodes.values() if n.port == int(port))


def start_redis_tls(base: Path) -> Topology:
    """A TLS-only Redis that requires a client certificate, with the `default` user off: the
    ACL user `wa-worker` (password in its folder) is the only way in."""
    base = base.resolve()  # the nodes run in their own folders: paths must not be relative
    topology = "redis-tls"
    folder = base / topology
    certs = make_certificates(folder / "certs")
    password_file = folder / "acl-password"
    if not password_file.exists():
        folder.mkdir(parents=True, exist_ok=True)
        password_file.write_text(os.urandom(12).hex())
        password_file.chmod(0o600)
    password = password_file.read_text()
    acl = [
        "--user",
        "default",
        "off",
        "--user",
        ACL_USER,
        "on",
        f">{password}",
        "~*",
        "&*",
        "+@all",
    ]
    server = _node(base, topology, "server", acl, certs)
    env = {
        "REDIS_URL": f"rediss://{ACL_USER}:{password}@127.0.0.1:{server.port}/0",
        "REDIS_MODE": "standalone",  # no question to ask at each connection (a TLS handshake)
    }
    return Topology(topology, env | certs.env(), {"server": server}, certs)


def start_named(base: Path, kind: str, tls: bool) -> Topology:
    """What `devstack up --redis KIND [--redis-tls]` starts (KIND: cluster or sentinel, or
    standalone with TLS)."""
    base = base.resolve()
    if kind == "cluster":
        return start_redis_cluster(
            base, tls=make_certificates(base / "redis-cluster-tls" / "certs") if tls else None
        )
    if kind == "sentinel":
        if tls:
            raise ValueError("--redis-tls goes with --redis standalone or cluster, not sentinel")
        return start_redis_sentinel(base)
    return start_redis_tls(base)


def recorded_nodes(base: Path) -> list[Service]:
    """Every topology node with a pid file under `base` (what `status` and `down` cover)."""
    found = []
    for pid_file in sorted(base.glob("redis-*/*/pid")):
        node = pid_file.parent
        marker = "redis-sentinel" if node.name.startswith("sentinel") else "redis-server"
        found.append(Service(f"{node.parent.name}/{node.name}", marker, base))
    return found
