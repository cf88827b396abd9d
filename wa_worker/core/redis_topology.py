"""What a Redis client is connected to, for /health: the mode, the cluster's primaries or the
primary Sentinel names, and whether the topology can take writes at all.

PING is not enough: a cluster with uncovered slots answers PING on every live node, and a
Sentinel set that lost its primary still answers on each sentinel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from redis.sentinel import SentinelConnectionPool

from wa_worker.core.redis_client import SyncRedis
from wa_worker.settings import RedisMode


@dataclass(frozen=True)
class Topology:
    mode: RedisMode
    nodes: tuple[str, ...] = ()  # a cluster's primaries, as the client knows them
    primary: str | None = None  # the primary the sentinels name
    problem: str | None = None  # why it cannot take the worker's writes; None when it can

    def fields(self) -> dict[str, Any]:
        """The /health fields (added to the Redis check; none of them holds a secret)."""
        shown: dict[str, Any] = {"mode": self.mode.value}
        if self.nodes:
            shown["nodes"] = list(self.nodes)
        if self.primary:
            shown["primary"] = self.primary
        return shown


@dataclass
class _ClusterReport:
    nodes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def inspect(client: SyncRedis) -> Topology:
    """The client's topology; `problem` says why it cannot work (never raises for that)."""
    if isinstance(client, redis.RedisCluster):
        return _cluster(client)
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        return _sentinel(pool)
    return Topology(RedisMode.STANDALONE)


def _cluster(client: redis.RedisCluster) -> Topology:
    report = _ClusterReport()
    for node in client.get_primaries():  # type: ignore[no-untyped-call]
        report.nodes.append(node.name)
        try:
            info: dict[str, Any] = client.cluster_info(target_nodes=node)
        except redis.RedisError as exc:
            report.problems.append(f"primary {node.name} does not answer ({exc})")
            continue
        state = info.get("cluster_state")
        if state != "ok":
            ok = info.get("cluster_slots_ok", "?")
            report.problems.append(f"cluster_state:{state} on {node.name} ({ok}/16384 slots ok)")
    problem = "; ".join(report.problems) or None
    return Topology(RedisMode.CLUSTER, tuple(report.nodes), problem=problem)


def _sentinel(pool: SentinelConnectionPool) -> Topology:
    try:
        host, port = pool.get_master_address()  # type: ignore[no-untyped-call]
    except redis.RedisError as exc:  # MasterNotFoundError: no sentinel names a live primary
        return Topology(RedisMode.SENTINEL, problem=f"no reachable primary ({exc})")
    return Topology(RedisMode.SENTINEL, primary=f"{host}:{port}")
