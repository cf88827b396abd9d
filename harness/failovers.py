"""Redis failovers the harness causes on the project's own topologies
(`devtools.redis_topologies`): a Sentinel failover asked for or forced by kill -9 of the
primary, and a Redis Cluster primary killed so that its replica is promoted.

Each returns a `Failover`: how long until a new primary served, and how many bytes of the
replication stream the old primary had and the promoted replica never got: writes acknowledged
to the worker and then lost, the window in which a done marker can vanish. That is the old
primary's last offset (read just before a kill, or last seen before Sentinel demoted it) minus
the offset at which the new primary's history forked from it (`second_repl_offset`); the writes
of the last millisecond before a kill (50 ms before a demotion) go uncounted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from devtools.redis_topologies import SENTINEL_MASTER, Node, Topology, sentinel_primary

PROMOTION_TIMEOUT_S = 60


@dataclass(frozen=True)
class Failover:
    at: float  # time.monotonic() of the fault
    seconds: float  # from the fault until a new primary answered as one
    unreplicated_bytes: int | None  # written to the old primary, never on the new one


def sentinel_failover(topology: Topology) -> Failover:
    """SENTINEL FAILOVER: the primary is demoted once its replica has caught up."""
    old = sentinel_primary(topology)
    _wait_synced(topology, old)
    started = time.monotonic()
    with _client(_sentinels(topology)[0]) as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", SENTINEL_MASTER)
    _wait(lambda: _promoted(topology, old), "Sentinel named no new primary")
    seconds = time.monotonic() - started
    # Writes the old primary takes until Sentinel demotes it are lost: its last offset as a
    # primary, past the new primary's fork point.
    last: list[int] = []
    _wait(lambda: _demoted(old, last), "Sentinel did not demote the old primary")
    lost = _lost_bytes(last[-1] if last else None, sentinel_primary(topology))
    return Failover(started, seconds, lost)


def sentinel_kill_primary(topology: Topology) -> Failover:
    """kill -9 of the primary; the sentinels notice (down-after 1 s), agree and promote. The
    killed node then restarts empty and the sentinels make it a replica of the new one."""
    old = sentinel_primary(topology)
    _wait_synced(topology, old)
    offset = _offset(old)
    started = time.monotonic()
    old.kill()
    _wait(lambda: _promoted(topology, old), "Sentinel promoted no replica after kill -9")
    seconds = time.monotonic() - started
    lost = _lost_bytes(offset, sentinel_primary(topology))
    old.restart()
    return Failover(started, seconds, lost)


def cluster_kill_primary(topology: Topology) -> Failover:
    """kill -9 of the Cluster primary serving slot 0; its replica takes over after
    cluster-node-timeout, then the killed node restarts and rejoins as a replica."""
    victim = _cluster_primaries(topology)[0]
    _wait_synced(topology, victim)
    replica = _replica_of(topology, victim)
    offset = _offset(victim)
    started = time.monotonic()
    victim.kill()
    _wait(lambda: _cluster_ok_without(replica, victim), "no replica promoted in the Cluster")
    seconds = time.monotonic() - started
    lost = _lost_bytes(offset, replica)
    victim.restart()
    return Failover(started, seconds, lost)


def _sentinels(topology: Topology) -> list[Node]:
    return [n for name, n in topology.nodes.items() if name.startswith("sentinel")]


def _client(node: Node) -> redis.Redis:
    return redis.Redis(port=node.port, socket_timeout=2, socket_connect_timeout=2)


def _promoted(topology: Topology, old: Node) -> bool:
    try:
        new = sentinel_primary(topology)
        if new is old:
            return False
        with _client(new) as client:
            role: Any = client.execute_command("ROLE")
        return bool(role) and _text(role[0]) == "master"
    except (redis.RedisError, StopIteration):
        return False


def _replication(node: Node) -> dict[str, Any]:
    with _client(node) as client:
        info: dict[str, Any] = client.info("replication")
    return info


def _demoted(node: Node, offsets: list[int]) -> bool:
    """Is `node` a replica now? While it is a primary, its offset is appended to `offsets`."""
    try:
        info = _replication(node)
    except redis.RedisError:
        return False
    if info.get("role") == "master":
        offsets.append(int(info["master_repl_offset"]))
        return False
    return True


def _offset(node: Node) -> int | None:
    try:
        return int(_replication(node)["master_repl_offset"])
    except (redis.RedisError, KeyError):
        return None


def _lost_bytes(old_offset: int | None, promoted: Node) -> int | None:
    """What the old primary had written past the point where the promoted one took over."""
    try:
        fork = int(_replication(promoted)["second_repl_offset"])  # first offset not inherited
    except (redis.RedisError, KeyError):
        return None
    if old_offset is None or fork < 0:
        return None
    return max(0, old_offset - (fork - 1))


def _wait_synced(topology: Topology, primary: Node) -> None:
    """Until the primary's replica has its data: a replica still in its first sync (5 s of
    diskless-sync delay after a start) is refused promotion, or promoted empty."""
    _wait(lambda: _synced(topology, primary), "the replica did not finish its first sync")


def _synced(topology: Topology, primary: Node) -> bool:
    try:
        replica = _replica_of(topology, primary)
        return _replication(replica).get("master_link_status") == "up"
    except (redis.RedisError, StopIteration):
        return False


def _replica_of(topology: Topology, primary: Node) -> Node:
    info = _replication(primary)
    ports = {int(v["port"]) for k, v in info.items() if k.startswith("slave") and "port" in v}
    return next(n for n in topology.nodes.values() if n.port in ports)


def _cluster_primaries(topology: Topology) -> list[Node]:
    by_port = {n.port: n for n in topology.nodes.values()}
    with _client(next(iter(topology.nodes.values()))) as client:
        nodes = _text(client.execute_command("CLUSTER", "NODES"))
    primaries = []
    for line in nodes.splitlines():
        fields = line.split()
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        if "master" in fields[2].split(",") and "fail" not in fields[2] and len(fields) > 8:
            primaries.append((fields[8], by_port[port]))  # ordered by their first slot range
    return [node for _, node in sorted(primaries, key=lambda p: int(p[0].split("-")[0]))]


def _cluster_ok_without(survivor: Node, victim: Node) -> bool:
    """The Cluster has marked the killed node failed and serves every slot again: from the
    replica it promoted. (Right after a kill it still says ok: it has not noticed yet.)"""
    try:
        with _client(survivor) as client:
            info = _text(client.execute_command("CLUSTER", "INFO"))
            nodes = _text(client.execute_command("CLUSTER", "NODES"))
    except redis.RedisError:
        return False
    for line in nodes.splitlines():
        fields = line.split()
        if fields[1].startswith(f"127.0.0.1:{victim.port}@"):
            failed = "fail" in fields[2].split(",")
            return failed and len(fields) <= 8 and "cluster_state:ok" in info
    return False


def _wait(ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PROMOTION_TIMEOUT_S
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {PROMOTION_TIMEOUT_S}s")
        time.sleep(0.05)


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)
