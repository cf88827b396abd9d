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
    if name in ("kill-9", "redis-down-lost"):
        # Events in flight at a kill (or whose done markers Redis lost) may repeat: few.
        assert report.duplicates_on_processed <= report.unique * 0.05
    else:
        assert report.duplicates_on_processed == 0
        assert report.duplicate_handler_successes == 0
    if name == "handler-down":
        assert report.dead_lettered <= 10  # the breaker held the rest
    if name == "handler-flaky":
        assert report.dead_lettered <= report.unique * 0.03
    if name in ("fuzz",):
        assert report.dead_lettered == 0


# The two most telling broker faults in CI; the others (inbound leader, controller, rolling
# restart) are `python -m harness broker-inbound-leader broker-controller broker-rolling`.
SHORT_BROKER_FAULTS = ["broker-outputs-leader", "broker-two-down"]


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
