"""The fault harness in short mode: every scenario must account for every event.

Runs the real worker against the harness's own Kafka and Redis (`.stack/harness`), which it
stops and starts. The longer soak is `python -m harness --duration SECONDS [scenario…]`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from devtools.kafka_cluster import Cluster
from devtools.worker import ROOT
from harness.accounting import Report, table
from harness.broker_faults import BROKER_SCENARIOS, ClusterLab
from harness.scenarios import SCENARIOS, SHORT, Lab
from tests.conftest import Stack

REPORTS: list[Report] = []
# Seconds without a handler success from the fault on, at most: the fault's own length, the
# claim retry after a Redis error (at most 1 s), and a second of slack for a busy machine.
RECOVERY_S = 1.0 + 1.0
STALL_LIMIT_S = {
    "redis-delay": 2.0,  # a slower Redis slows batches; it never stops them
    # plus a batch sent into the blackhole whose 2 s timeout runs out after the heal
    "redis-blackhole": SHORT.redis_fault_s + 2.0 + RECOVERY_S,
    "redis-reset": SHORT.redis_fault_s + RECOVERY_S,
    # Sentinel promotes within a second when asked; after a kill it first waits out
    # down-after (1 s), a Cluster its node timeout (2 s).
    "sentinel-failover": 1.0 + RECOVERY_S,
    "sentinel-kill-9": 4.0 + RECOVERY_S,
    "cluster-kill-9": 6.0 + RECOVERY_S,
}
KILL_IN_FLIGHT = 30
# Done markers acknowledged by a primary that died (or was demoted) before replicating them.
LOST_WRITES = ("sentinel-failover", "sentinel-kill-9", "cluster-kill-9")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab.start(ROOT / ".stack" / "harness")
    yield lab
    lab.close()
    print("\n" + table(REPORTS))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_loses_nothing(lab: Lab, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        report = SCENARIOS[name](lab, Path(workdir), SHORT)
    REPORTS.append(report)
    with capsys.disabled():  # the accounting table belongs in CI's output
        print("\n" + table([report]), flush=True)
    assert report.lost == 0
    assert report.processed + report.dead_lettered == report.unique
    if name == "kill-9":
        # What Kafka acknowledged but whose done markers the kill cut off repeats: at most the
        # batches in flight at each kill (~120 events/s arrive; a loaded machine's batch cycle
        # takes up to ~0.25 s). A share of the total would depend on how many kills fell in.
        assert report.duplicates_on_processed <= max(1, report.restarts) * KILL_IN_FLIGHT
    elif name in ("redis-down-lost", *LOST_WRITES):
        # Events in flight at a kill (or whose done markers Redis lost) may repeat: few.
        assert report.duplicates_on_processed <= report.unique * 0.05
    else:
        assert report.duplicates_on_processed == 0
        assert report.duplicate_handler_successes == 0
    if name == "handler-down":
        assert report.dead_lettered <= 10  # the breaker held the rest
    if name == "handler-flaky":
        assert report.dead_lettered <= report.unique * 0.03
    assert report.unexplained_repeats == 0
    if name in LOST_WRITES:
        # Only what the old primary took in its last instant may be gone, or, when it stays
        # up (SENTINEL FAILOVER), until the worker saw the new primary: not the ten seconds
        # until Sentinel demotes the old one.
        assert report.lost_window_s is not None
        assert report.lost_window_s <= 2.5  # promotion, then the worker's next look (6 s without)
    if name in ("redis-delay", "redis-blackhole", "redis-reset"):
        assert report.markers_missing == 0  # one Redis, however slow or cut off, keeps them all
    if name in STALL_LIMIT_S:
        assert report.stall_s is not None
        assert report.stall_s <= STALL_LIMIT_S[name]
    if name in ("fuzz",):
        assert report.dead_lettered == 0


# Every broker fault, in short mode (5 s outages; the rolling restart takes ~2 minutes).
SHORT_BROKER_FAULTS = sorted(BROKER_SCENARIOS)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", SHORT_BROKER_FAULTS)
def test_broker_fault_loses_and_repeats_nothing(
    kafka_cluster: Cluster, stack: Stack, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = ClusterLab(kafka_cluster, stack.redis_url)
    with tempfile.TemporaryDirectory() as workdir:
        # A 5 s outage: enough for the elections (or the quorum's loss) to happen, and CI's
        # budget; `python -m harness broker-…` uses 10 s.
        report = BROKER_SCENARIOS[name](lab, Path(workdir), replace(SHORT, outage_s=5))
    with capsys.disabled():
        print("\n" + table([report]), flush=True)
    assert report.lost == 0 and report.poison_missing == 0
    assert report.processed + report.dead_lettered == report.unique
    assert report.dead_lettered == 0  # a broker failover is no reason to dead-letter an event
    assert report.duplicates_on_processed == 0  # acks=all, idempotent producer
    assert report.duplicate_handler_successes == 0
    assert report.restarts == 0  # the worker rode through (it is checked to be running too)
    assert all(s < 60 for s in report.stalls_s), report.stalls_s
