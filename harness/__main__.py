"""Run fault scenarios and print the accounting table.

.venv/bin/python -m harness                         # every scenario, short (CI) sizes
.venv/bin/python -m harness --duration 600 kill-9   # a 10-minute kill -9 soak
.venv/bin/python -m harness broker-rolling          # broker faults: a 3-broker SASL_SSL cluster
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import typer

from devtools.worker import ROOT
from harness.accounting import Report, table
from harness.broker_faults import BROKER_SCENARIOS, ClusterLab
from harness.scenarios import SCENARIOS, SHORT, Lab

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    scenarios: list[str] = typer.Argument(
        None, help=f"any of: {', '.join([*SCENARIOS, *BROKER_SCENARIOS])}"
    ),
    duration: float = typer.Option(0, help="seconds of traffic per scenario (0: short mode)"),
    rate: float = typer.Option(SHORT.rate, help="webhooks per second"),
    redis_fault_s: float = typer.Option(
        SHORT.redis_fault_s, help="length of a delay or partition between worker and Redis"
    ),
) -> None:
    names = scenarios or [*SCENARIOS, *BROKER_SCENARIOS]
    unknown = [n for n in names if n not in SCENARIOS and n not in BROKER_SCENARIOS]
    if unknown:
        choices = [*SCENARIOS, *BROKER_SCENARIOS]
        raise typer.BadParameter(f"unknown scenario {unknown}; choose from {choices}")
    webhooks = int(duration * rate) if duration else SHORT.webhooks
    scale = replace(SHORT, rate=rate, webhooks=webhooks, redis_fault_s=redis_fault_s)
    reports = run(names, scale)
    raise typer.Exit(1 if any(r.lost for r in reports) else 0)


def run(names: list[str], scale: object) -> list[Report]:
    reports: list[Report] = []
    single = [n for n in names if n in SCENARIOS]
    on_cluster = [n for n in names if n in BROKER_SCENARIOS]
    if single:
        lab = Lab.start(ROOT / ".stack" / "harness")
        try:
            with tempfile.TemporaryDirectory() as workdir:
                for name in single:
                    reports.append(SCENARIOS[name](lab, Path(workdir), scale))  # type: ignore[arg-type]
                    print(table(reports[-1:]), flush=True)
        finally:
            lab.close()
    if on_cluster:
        cluster_lab = ClusterLab.start(ROOT / ".stack" / "harness-cluster")
        try:
            with tempfile.TemporaryDirectory() as workdir:
                for name in on_cluster:
                    scenario = BROKER_SCENARIOS[name]
                    reports.append(scenario(cluster_lab, Path(workdir), scale))  # type: ignore[arg-type]
                    print(table(reports[-1:]), flush=True)
        finally:
            cluster_lab.close()
    print("\n" + table(reports))
    return reports


if __name__ == "__main__":
    app()
