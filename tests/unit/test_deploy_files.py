"""deploy/: the Prometheus config and rule file pass promtool (its checks and the rule file's own unit
tests), and the Grafana dashboard and the rules ask only for families /metrics has, by labels those
families carry, so that no panel or alert stays empty because a name or a label was misspelt."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.metric_families import CANARY, GUARD, OPEN, Shape
from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "turnout-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "turnout-alerts.test.yml"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "turnout-dashboard.json"

#: Every family a proxy's page can show: the open backends', the guard's and a canary's.
FAMILIES: Shape = {**OPEN, **GUARD, **CANARY}
#: Labels every series has beyond its family's own: Prometheus' target labels, and the worker label
#: of worker 0's page under `turnout serve --workers N`.
ADDED_LABELS = frozenset({"job", "instance", "worker"})
#: Gauges that carry `quantile` as a summary does (metric_families sets it aside).
QUANTILED = frozenset({"turnout_window_latency_seconds"})
#: The alerts for the plan's triggers and the plumbing under them.
ALERTS = {"TurnoutNewErrorRateHigh", "TurnoutNewLatencyAboveOld", "TurnoutDiscrepancyRateHigh",
          "TurnoutDiscrepancyRateSurelyHigh", "TurnoutAutomaticRollback", "TurnoutOverrideActive",
          "TurnoutHeldOnOldByAutomaticRollback", "TurnoutBackendUnhealthy", "TurnoutReplicationQueueDeep",
          "TurnoutReplicationLagging", "TurnoutReplicationFailing", "TurnoutFlagReloadFailed"}

_SERIES = re.compile(r"(?<![\w:])(turnout(?:_|:)[a-zA-Z0-9_:]+)(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_AGGREGATION = re.compile(r"\b(?:sum|min|max|avg|count|stddev|stdvar|group|topk|bottomk|quantile)\s+"
                          r"(by|without)\s*\(([^)]*)\)\s*\(")
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed (.ci/run installs Debian's prometheus, which has it)")
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def rule_groups() -> list[dict[str, Any]]:
    doc: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return list(doc["groups"])


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def dashboard_queries(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows' panels included."""
    queries: list[tuple[str, str]] = []
    for panel in doc["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            queries.extend((inner["title"], target["expr"]) for target in inner.get("targets", []))
    return queries


def as_promql(expr: str) -> str:
    """A dashboard expression with its template variables as Prometheus would get them for "All"."""
    return _VARIABLE.sub(".*", expr)


def recorded_labels() -> Shape:
    """Each recording rule's series as a family: the labels of its aggregation's `by`."""
    recorded: Shape = {}
    for group in rule_groups():
        for rule in group["rules"]:
            if "record" in rule:
                clauses = _AGGREGATION.findall(rule["expr"])
                labels = frozenset(label.strip() for _, by in clauses[:1] for label in by.split(",") if label.strip())
                recorded[rule["record"]] = ("gauge", labels)
    return recorded


def labels_of(name: str, known: Shape) -> frozenset[str] | None:
    """The labels series `name` may carry, or None when no family gives such a series (a summary's
    _sum and _count are series of their own, without `quantile`)."""
    if name in known:
        kind, labels = known[name]
        quantile = {"quantile"} if kind == "summary" or name in QUANTILED else set()
        return labels | ADDED_LABELS | quantile
    for suffix in ("_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and known.get(base, ("", frozenset()))[0] == "summary":
            return known[base][1] | ADDED_LABELS
    return None


def closing(expr: str, start: int) -> int:
    """The index just past the parenthesis that closes the one opened at expr[start - 1]."""
    depth = 1
    for i in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return i
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


def problems(expr: str, known: Shape) -> list[str]:
    """What in expr names a series no family gives, a label its series lacks, or groups `by` a label
    a series inside the aggregation lacks."""
    found = []
    if re.search(r"\)\s*(by|without)\s*\(", expr):
        found.append("an aggregation's by/without after its argument: write `sum by (x) (...)`")
    for match in _SERIES.finditer(expr):
        name, matchers = match.group(1), match.group(2) or ""
        labels = labels_of(name, known)
        if labels is None:
            found.append(f"{name}: no such family")
            continue
        found.extend(f"{name}: no label {label}" for label in _MATCHER.findall(matchers) if label not in labels)
    for match in _AGGREGATION.finditer(expr):
        argument = expr[match.end():closing(expr, match.end())]
        grouped = {label.strip() for label in match.group(2).split(",") if label.strip()}
        for inner in _SERIES.finditer(argument):
            labels = labels_of(inner.group(1), known)
            if labels is not None:
                found.extend(f"{inner.group(1)}: {match.group(1)} ({label}), a label it lacks"
                             for label in sorted(grouped - labels))
    return found


def test_the_checker_catches_a_misspelt_family_label_or_grouping() -> None:
    """The checks below can fail: an unknown family, a matcher on a missing label, grouping by a
    label the family lacks, a counter without _total, a summary's _sum by quantile."""
    assert problems('sum by (route) (rate(turnout_operations_total{route="new"}[1m]))', FAMILIES) == []
    assert problems("rate(turnout_operations[1m])", FAMILIES) == ["turnout_operations: no such family"]
    assert problems('turnout_backend_healthy{route="new"}', FAMILIES) == ["turnout_backend_healthy: no label route"]
    assert problems("max by (backend) (turnout_replication_queue_depth)", FAMILIES) == [
        "turnout_replication_queue_depth: by (backend), a label it lacks"]
    assert problems("sum by (quantile) (turnout_backend_latency_seconds_sum)", FAMILIES) == [
        "turnout_backend_latency_seconds_sum: by (quantile), a label it lacks"]
    assert problems("sum(turnout_operations_total) by (route)", FAMILIES) != []
    assert problems('max by (quantile) (turnout_backend_latency_seconds{quantile="0.99"})', FAMILIES) == []


def test_the_rule_file_passes_promtool_check_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_pass_their_own_promtool_unit_tests() -> None:
    """turnout-alerts.test.yml: each alert fires past its threshold and not below it."""
    done = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_example_config_passes_promtool_check_config_with_its_rule_file() -> None:
    """The rule file is named relative to the config, so the check finds and checks it too."""
    done = promtool("check", "config", str(CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "turnout-alerts.yml" in done.stdout
    doc = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert doc["rule_files"] == ["turnout-alerts.yml"]
    assert [job["metrics_path"] for job in doc["scrape_configs"]] == ["/metrics"]


def test_every_rule_names_families_and_labels_that_exist() -> None:
    known = {**FAMILIES, **recorded_labels()}
    found = {rule.get("alert") or rule["record"]: problems(rule["expr"], known)
             for group in rule_groups() for rule in group["rules"]}
    assert {name: p for name, p in found.items() if p} == {}


def test_there_is_an_alert_for_each_of_the_plans_triggers_with_its_threshold() -> None:
    alerts = {rule["alert"]: rule for group in rule_groups() for rule in group["rules"] if "alert" in rule}
    assert set(alerts) == ALERTS
    assert "> 0.01" in alerts["TurnoutNewErrorRateHigh"]["expr"]
    assert "1.2 *" in alerts["TurnoutNewLatencyAboveOld"]["expr"]
    assert "> 0.0001" in alerts["TurnoutDiscrepancyRateHigh"]["expr"]
    assert 'bound="low"' in alerts["TurnoutDiscrepancyRateSurelyHigh"]["expr"]
    assert 'automatic="true"' in alerts["TurnoutAutomaticRollback"]["expr"]
    assert all(rule["labels"]["severity"] in {"warning", "critical"} and rule["annotations"]["summary"]
               for rule in alerts.values())


def test_the_dashboard_asks_only_for_families_and_labels_that_exist() -> None:
    queries = dashboard_queries(dashboard())
    assert len(queries) >= 15
    found = {f"{title}: {expr}": problems(expr, FAMILIES) for title, expr in queries}
    assert {query: p for query, p in found.items() if p} == {}


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    """Prometheus' own parser (through promtool) on every query, as recording rules of a scratch file."""
    rules = [{"record": f"dashboard:query{i}", "expr": as_promql(expr)}
             for i, (_, expr) in enumerate(dashboard_queries(dashboard()))]
    scratch = tmp_path / "dashboard-rules.yml"
    scratch.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    done = promtool("check", "rules", str(scratch))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_has_the_pages_panels_unique_ids_and_a_datasource_variable() -> None:
    doc = dashboard()
    panels = [inner for panel in doc["panels"] for inner in [panel, *panel.get("panels", [])]]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queried = [panel for panel in panels if panel["type"] != "row"]
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in queried)
    assert all(target["datasource"]["uid"] == "${datasource}" for panel in queried for target in panel["targets"])
    exprs = " ".join(expr for _, expr in dashboard_queries(doc))
    # The page's panels, each by the family it is drawn from.
    for family in ("turnout_override_active", "turnout_canary_step", "turnout_canary_percentage",
                   "turnout_operations_total", "turnout_backend_errors_total", "turnout_backend_latency_seconds",
                   "turnout_window_latency_seconds", "turnout_window_discrepancy_rate", "turnout_discrepancies_total",
                   "turnout_replication_queue_depth", "turnout_replication_oldest_age_seconds",
                   "turnout_rollbacks_total", "turnout_backend_healthy"):
        assert family in exprs, family
    assert "sum by (route) (rate(turnout_operations_total{" in exprs
    # Every series filtered by the proxy chosen, so that one dashboard serves several proxies.
    for _, expr in dashboard_queries(doc):
        for match in _SERIES.finditer(expr):
            assert 'instance=~"$instance"' in (match.group(2) or ""), expr


def test_docker_compose_runs_prometheus_and_grafana_on_these_files() -> None:
    """Prometheus runs in the proxy's network (the example keeps admin.http on loopback) with this
    folder as its config, scraping the example's admin.http; Grafana is provisioned with it as its
    datasource and loads the dashboard from where the provider looks."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
    prometheus, grafana, proxy = services["prometheus"], services["grafana"], services["turnout"]
    assert prometheus["network_mode"] == "service:turnout"
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    example = yaml.safe_load((ROOT / "config" / "examples" / "jsonfile-to-postgres.yaml").read_text(encoding="utf-8"))
    assert proxy["command"][-1].endswith("/jsonfile-to-postgres.yaml")
    targets = [t for job in yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["scrape_configs"]
               for group in job["static_configs"] for t in group["targets"]]
    assert targets == [example["admin"]["http"]]
    assert "9090:9090" in [port.split()[0] for port in proxy["ports"]]

    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    assert [(d["type"], d["url"]) for d in datasources["datasources"]] == [("prometheus", "http://turnout:9090")]
    providers = yaml.safe_load((provisioning / "dashboards" / "turnout.yml").read_text(encoding="utf-8"))
    folder = providers["providers"][0]["options"]["path"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert f"./deploy/grafana/turnout-dashboard.json:{folder}/turnout-dashboard.json:ro" in grafana["volumes"]


def test_the_dashboards_panels_do_not_overlap_on_its_24_column_grid() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]
