"""A real Prometheus (Debian's `prometheus`) scraping a real `turnout serve`: it answers PromQL over
turnout series, the Grafana dashboard's queries give the figures the traffic made, and the shipped
rule file loads with every rule evaluating cleanly, and one of its alerts fires on the proxy's figures."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from turnout import AsyncClient

from tests.support.paths import ROOT
from tests.support.proxy_process import ProxyProcess, http_address, write_config

RULES = ROOT / "deploy" / "prometheus" / "turnout-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "turnout-dashboard.json"
JOB = "turnout-live"
#: The whole wait for Prometheus (start, scrapes, rule evaluations) gives up after this.
PATIENCE_S = 30.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def prometheus_config(folder: Path, target: str) -> Path:
    """Scrape target every second and evaluate the shipped rules every second."""
    doc = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}],
    }
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@asynccontextmanager
async def running_prometheus(folder: Path, target: str) -> AsyncIterator[str]:
    """A Prometheus of our own scraping target; yields its base URL, stops it by its pid."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (.ci/run installs Debian's prometheus)")
    listen = f"127.0.0.1:{free_port()}"
    log = (folder / "prometheus.log").open("w")
    process = subprocess.Popen([binary, f"--config.file={prometheus_config(folder, target)}",
                                f"--storage.tsdb.path={folder / 'tsdb'}", f"--web.listen-address={listen}"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://{listen}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def api(session: aiohttp.ClientSession, base: str, path: str, **params: str) -> Any:
    """The `data` of a Prometheus API answer; None while Prometheus does not answer yet."""
    try:
        async with session.get(f"{base}{path}", params=params, timeout=aiohttp.ClientTimeout(total=5)) as reply:
            doc = await reply.json()
    except (TimeoutError, aiohttp.ClientError):
        return None
    assert doc["status"] == "success", f"{path} {params}: {doc}"
    return doc["data"]


async def instant(session: aiohttp.ClientSession, base: str, query: str) -> dict[str, float]:
    """An instant query's vector, each sample's labels (without __name__) as one sorted string."""
    data = await api(session, base, "/api/v1/query", query=query)
    if data is None:
        return {}
    assert data["resultType"] == "vector", data
    return {json.dumps({k: v for k, v in sample["metric"].items() if k != "__name__"}, sort_keys=True):
            float(sample["value"][1]) for sample in data["result"]}


class Patience:
    """One deadline for every wait of a test: Prometheus' start, its scrapes and rule evaluations
    together get PATIENCE_S, then the test fails saying what it waited for and what Prometheus logged."""

    def __init__(self, prometheus_log: Path) -> None:
        self.deadline = time.monotonic() + PATIENCE_S
        self.log = prometheus_log

    async def until(self, what: str, check: Callable[[], Awaitable[T]]) -> T:
        """Poll check until it gives something truthy."""
        while True:
            result = await check()
            if result:
                return result
            if time.monotonic() > self.deadline:
                pytest.fail(f"gave up after {PATIENCE_S:g}s waiting for {what}; prometheus said:\n"
                            + self.log.read_text()[-3000:])
            await asyncio.sleep(0.25)


async def traffic(target: str, stop: asyncio.Event) -> int:
    """Sets and gets on a few keys until stop, a little at a time; returns how many calls."""
    calls = 0
    async with AsyncClient(target, timeout=5) as kv:
        while not stop.is_set():
            for i in range(10):
                await kv.set(f"user:{i}", {"n": calls})
                await kv.get(f"user:{i}")
                calls += 2
            await asyncio.sleep(0.05)
    return calls


def dashboard_queries(instance: str) -> dict[str, str]:
    """The dashboard's queries by panel title and legend, with its variables set to this proxy."""
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return {f"{panel['title']} / {target['legendFormat']}":
            target["expr"].replace("$job", JOB).replace("$instance", instance.replace(".", "\\\\."))
            for panel in doc["panels"] for target in panel.get("targets", [])}


async def test_prometheus_scrapes_the_proxy_and_the_dashboard_and_rules_read_its_series(tmp_path: Path) -> None:
    """Shadow mode with half the keys on new: Prometheus scrapes both routes' calls, the dashboard's
    queries give calls per second by route above 0, no errors, healthy backends, and the shipped
    rules load and evaluate with health ok, no alert firing until a refused flag file fires its alert."""
    config = write_config(tmp_path, old={"type": "sqlite", "path": "old.sqlite"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    (tmp_path / "flags.yaml").write_text("use_new_storage: true\nshadow_mode_enabled: true\n"
                                         "traffic_percentage: {read: 50, write: 50}\n")
    with ProxyProcess(config) as proxy:
        address = http_address(tmp_path / "state")
        patience = Patience(tmp_path / "prometheus.log")
        stop = asyncio.Event()
        sender = asyncio.create_task(traffic(proxy.target, stop))
        try:
            async with running_prometheus(tmp_path, address) as base, aiohttp.ClientSession() as session:
                job = f'{{job="{JOB}"}}'

                async def scraped() -> dict[str, float]:
                    return await instant(session, base, f"turnout_operations_total{job}")
                series = await patience.until("a scrape of turnout_operations_total", scraped)
                assert {json.loads(labels)["route"] for labels in series} <= {"old", "new"}

                async def both_routes_move() -> dict[str, float]:
                    rates = await instant(session, base, f"sum by (route) (rate(turnout_operations_total{job}[30s]))")
                    return rates if len(rates) == 2 and all(v > 0 for v in rates.values()) else {}
                rates = await patience.until("calls per second on both routes", both_routes_move)
                assert set(rates) == {'{"route": "new"}', '{"route": "old"}'}

                async def rules_evaluated() -> list[dict[str, Any]]:
                    data = await api(session, base, "/api/v1/rules")
                    rules = [rule for group in (data or {}).get("groups", []) for rule in group["rules"]]
                    return rules if rules and all(rule["health"] != "unknown" for rule in rules) else []
                rules = await patience.until("every rule evaluated once", rules_evaluated)
                shipped = yaml.safe_load(RULES.read_text(encoding="utf-8"))
                names = {rule.get("alert") or rule["record"] for group in shipped["groups"] for rule in group["rules"]}
                assert {rule["name"] for rule in rules} == names
                assert {rule["name"]: rule.get("lastError", "") for rule in rules if rule["health"] != "ok"} == {}
                assert [rule["name"] for rule in rules if rule.get("state") == "firing"] == []

                async def recorded() -> dict[str, float]:
                    rates = await instant(session, base, f"turnout:operations:rate1m{job}")
                    return rates if len(rates) == 2 and all(v > 0 for v in rates.values()) else {}
                await patience.until("the recording rule turnout:operations:rate1m on both routes", recorded)

                queries = dashboard_queries(address)
                answers = {name: await instant(session, base, expr) for name, expr in queries.items()}
                per_route = answers["Calls per second by route / {{route}}"]
                assert len(per_route) == 2, per_route
                assert all(v > 0 for v in per_route.values()), per_route
                errors = answers["Error rate per backend (5m) / {{backend}}"]
                assert errors == {'{"backend": "new"}': 0.0, '{"backend": "old"}': 0.0}
                health = answers["Backend health / {{backend}}"]
                assert health == {'{"backend": "new"}': 1.0, '{"backend": "old"}': 1.0}
                share = answers["Phase (share of operations new answered, 5m) / new"]
                assert 0 < next(iter(share.values())) < 1, share  # half the keys on new
                p99 = [v for labels, v in answers["Latency p50/p95/p99 per backend and operation (since start) / "
                                                  "{{backend}} {{op}} p{{quantile}}"].items()
                       if json.loads(labels)["quantile"] == "0.99"]
                assert p99
                assert all(0 < v < 5 for v in p99), p99
                bounds = answers["Discrepancy rate with its bound / window {{bound}}"]
                assert {json.loads(labels)["bound"] for labels in bounds} == {"point", "low", "high"}
                assert bounds['{"bound": "point"}'] == 0.0  # both stores take the same writes
                rollbacks = answers["Rollbacks executed / {{trigger}} (automatic: {{automatic}})"]
                assert len(rollbacks) == 6  # every kind of rollback, from zero
                assert set(rollbacks.values()) == {0.0}

                # A flag file the proxy refuses: its failure counter moves, and the alert fires.
                (tmp_path / "flags.yaml").write_text("traffic_percentage: {read: 500}\n")

                async def alerted() -> list[dict[str, Any]]:
                    data = await api(session, base, "/api/v1/alerts")
                    return [alert for alert in (data or {}).get("alerts", [])
                            if alert["labels"]["alertname"] == "TurnoutFlagReloadFailed" and alert["state"] == "firing"]
                firing = await patience.until("TurnoutFlagReloadFailed to fire", alerted)
                assert [(alert["labels"]["job"], alert["labels"]["instance"]) for alert in firing] == [(JOB, address)]
        finally:
            stop.set()
            assert await sender > 0
