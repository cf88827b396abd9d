"""The fault harness in short mode: every scenario must account for every event.

Runs the real worker against the harness's own Kafka and Redis (`.stack/harness`), which it
stops and starts. The longer soak is `python -m harness --duration SECONDS [scenario…]`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.worker import ROOT
from harness.accounting import Report, table
from harness.scenarios import SCENARIOS, SHORT, Lab

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
    if name in ("kill-9", "redis-down-lost", *LOST_WRITES):
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
