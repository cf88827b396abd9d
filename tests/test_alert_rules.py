"""deploy/prometheus/alerts.yml and deploy/grafana/wa-worker.json: promtool checks and unit-tests
the rules, every alert has a firing test case and a runbook line, every dashboard query parses,
and every metric either of them names is exported by a live worker's /metrics."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devtools.devstack import free_port
from devtools.promtool import ensure_promtool
from devtools.worker import ROOT, WorkerProcess

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "wa-worker.json"
DEPLOY_README = ROOT / "deploy" / "README.md"
# Series Prometheus makes itself for every target; the worker cannot export them.
SCRAPE_SERIES = {"up"}
# What the issue asks the dashboard to show (each one a metric of wa_worker/core/metrics.py).
DASHBOARD_NEEDS = {
    "wa_events_received_total",  # throughput by kind
    "wa_events_processed_total",
    "wa_events_dead_lettered_total",
    "wa_events_duplicates_total",
    "wa_retries_pending",
    "wa_handler_in_flight",
    "wa_events_in_progress",
    "wa_handler_circuit_open",
    "wa_consumer_lag_messages",
    "wa_handler_latency_seconds_bucket",
    "wa_end_to_end_latency_seconds_bucket",
    "wa_redis_roundtrip_seconds_count",
    "wa_redis_errors_total",
}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        rest = text[match.end() :].lstrip()
        if match.group() not in _KEYWORDS and not rest.startswith("("):
            names.add(match.group())
    return names


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _dashboard_queries() -> list[str]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]


def _as_promql(query: str) -> str:
    """A dashboard query with Grafana's variables filled in as Grafana would."""
    return query.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ensure_promtool()), *args], capture_output=True, text=True, check=False, cwd=ROOT
    )


def test_metric_names_skips_functions_labels_ranges_and_grouping() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, instance) (rate(a_bucket{job=~"x"}[5m])))'
        ' > 0 and on (job) up{instance="b:1"} unless ignoring (kind) c_total offset 5m'
    )
    assert metric_names(expr) == {"a_bucket", "up", "c_total"}


def test_promtool_checks_the_alert_rules() -> None:
    done = _promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in done.stdout


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    done = _promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_unit_test_and_a_runbook_line() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        check["alertname"]
        for case in cases
        for check in case["alert_rule_test"]
        if check.get("exp_alerts")
    }
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) >= 6
    assert set(names) <= fired, f"no firing test case for {set(names) - fired}"
    runbook = DEPLOY_README.read_text().split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    for name in names:
        assert re.search(rf"^- \*\*`{name}`\*\*", runbook, re.M), f"no runbook line for {name}"


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = _dashboard_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": _as_promql(q)}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    done = _promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout


def test_the_dashboard_shows_what_the_issue_asks_and_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "wa-worker" and dashboard["schemaVersion"] >= 36
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables  # instance: one per process
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    named = set().union(*(metric_names(_as_promql(q)) for q in _dashboard_queries()))
    assert named >= DASHBOARD_NEEDS, f"missing {DASHBOARD_NEEDS - named}"
    for query in _dashboard_queries():
        if "wa_" in query:  # filterable per process
            assert 'instance=~"$instance"' in query, query


def _exported(metrics_text: str) -> set[str]:
    """Series names a /metrics page can hold, from its TYPE lines (a labelled metric that has
    not counted yet has a TYPE line but no sample)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, re.M):
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
        else:
            names.add(name)
    return names


def test_every_metric_the_dashboard_and_rules_name_is_exported_by_a_live_worker(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    port = free_port()
    worker = start_worker(HEALTH_PORT=str(port))
    deadline = time.monotonic() + 90
    text = ""
    while time.monotonic() < deadline and worker.running():
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            break
        except httpx.HTTPError:
            time.sleep(0.5)
    assert text, f"no /metrics from the worker:\n{worker.log()[-3000:]}"
    exported = _exported(text)
    named = set().union(
        *(metric_names(rule["expr"]) for rule in _alerts()),
        *(metric_names(_as_promql(q)) for q in _dashboard_queries()),
    )
    assert {"wa_consumer_lag_messages", "wa_handler_latency_seconds_bucket"} <= named
    assert named - SCRAPE_SERIES - exported == set()


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: str(rule["alert"]))
def test_every_alert_has_a_severity_summary_and_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"]
    assert rule["annotations"]["runbook"] == "deploy/README.md#alerts"


def test_compose_prometheus_loads_the_alert_rules() -> None:
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]  # relative to /etc/prometheus/prometheus.yml
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
