"""The dashboard in a real headless Chromium against a real `turnout serve` with traffic: what it draws,
that its figures move with the traffic, that it asks nothing of any other host, and that it says so
when the proxy stops answering; and the panels an operator triages with: key-space coverage after a
verify, a discrepancy's triage record on a click, an expired comparison rule flagged with its owner."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright
from turnout import AsyncClient, KeyNotFound, RetryPolicy, TurnoutError

from tests.support.proxy_process import ProxyProcess, get_page, http_address, run_turnout, write_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
SHADOW_FLAGS = "revision: shadow-1\nuse_new_storage: true\nshadow_mode_enabled: true\n"
#: How long the page may take to show a change: the history takes a point every 5 s, the page polls every 2 s.
SHOWN_WITHIN_MS = 30_000

pytestmark = pytest.mark.slow


def expired_rule_flags() -> str:
    """Shadow mode with one comparison rule whose last day was yesterday (UTC): it no longer applies."""
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    return (SHADOW_FLAGS + "comparison_rules:\n"
            f"  - {{keys: '^cart:', ignore_fields: [$.seen], owner: carts-team, expires: {yesterday.isoformat()}}}\n")


def proxy_in(folder: Path, args: tuple[str, ...] = (), flags: str = SHADOW_FLAGS) -> ProxyProcess:
    """A proxy on two SQLite stores in shadow mode: old serves, new is compared."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flags.yaml").write_text(flags, encoding="utf-8")
    config = write_config(folder, old={"type": "sqlite", "path": "old.sqlite"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    return ProxyProcess(config, args=args)


async def traffic(client: AsyncClient, stop: asyncio.Event) -> int:
    """Sets and reads back 50 keys until stopped; returns the calls made."""
    calls = 0
    while not stop.is_set():
        key = f"user:{calls % 50:02}"
        with contextlib.suppress(TurnoutError):
            await client.set(key, {"n": calls})
            await client.get(key)
        calls += 2
        await asyncio.sleep(0.005)
    return calls


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # a failure, not a skip: CI must never pass without the browser test
        pytest.fail("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def number(page: Page, selector: str) -> float:
    return float((await page.inner_text(selector)).split()[0])


async def wait_until(page: Page, script: str, arg: object = None) -> None:
    await page.wait_for_function(script, arg=arg, timeout=SHOWN_WITHIN_MS, polling=250)


async def logged_records(http: str, key: str) -> list[dict[str, Any]]:
    """key's triage records from /discrepancies.json, once the log's flusher has written them (it runs
    a few times a second; bounded at about 10 s)."""
    for _ in range(100):
        doc = json.loads(await asyncio.to_thread(get_page, http, f"/discrepancies.json?key={key}"))
        if doc["records"]:
            records: list[dict[str, Any]] = doc["records"]
            return records
        await asyncio.sleep(0.1)
    raise AssertionError(f"no triage record of {key} in the log")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


async def test_the_dashboard_draws_the_migration_live_and_says_when_the_proxy_stops(tmp_path: Path) -> None:
    """Under shadow mode with traffic the page shows the phase, the shares, charts with points, the
    score and its formula, a planted discrepancy; calls/s rises with traffic; every request goes to
    the proxy on 127.0.0.1; a click on the discrepancy shows its triage record; after a verify the
    coverage panel shows the users' prefix with its share; the expired rule is flagged; once the proxy
    is stopped the page says it is not answering."""
    proxy = proxy_in(tmp_path, flags=expired_rule_flags()).start()
    try:
        http = http_address(tmp_path / "state")
        origin = f"http://{http}/"
        assert http.startswith("127.0.0.1:")
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1366, "height": 768})
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            await page.goto(origin)
            await wait_until(page, "() => document.getElementById('updated').textContent.startsWith('updated')")
            assert (await page.inner_text("#phase")).startswith("1 shadow")
            assert await number(page, "#read-pct") == 0
            assert await number(page, "#write-pct") == 0
            assert "no canary" in await page.inner_text("#canary")
            # Before any traffic: a history point of nothing served.
            await wait_until(page, "() => document.querySelectorAll('#chart-calls path.series').length === 2")
            idle = await number(page, "#calls-now")
            assert idle == 0
            stop = asyncio.Event()
            async with AsyncClient(proxy.target, timeout=5, retry=RetryPolicy(attempts=1)) as client:
                load = asyncio.create_task(traffic(client, stop))
                await wait_until(page, "() => parseFloat(document.getElementById('calls-now').textContent) > 5")
                busy = await number(page, "#calls-now")
                assert busy > idle
                # A key only new holds, written behind the proxy's back, then read through it.
                with sqlite3.connect(tmp_path / "new.sqlite") as db:
                    db.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("planted:1", b'{"only": "new"}'))
                with pytest.raises(KeyNotFound):
                    await client.get("planted:1")
                await wait_until(page, "() => document.getElementById('latest').textContent.includes('planted:1')")
                row = await page.inner_text("#latest tr:first-child")
                assert "planted:1" in row
                assert "extra_in_shadow" in row
                assert "get" in row
                # Values are not recorded by default: the page shows none (only what /discrepancies.json has).
                assert "only" not in row
                # Its triage record, on a click: the routing decision as the log has it, and no values.
                (logged,) = await logged_records(http, "planted:1")
                assert logged["route"]
                assert logged["reason"]
                await page.click("#latest tr[data-key='planted:1']")
                await wait_until(page, "() => document.querySelector('#triage .record') !== null")
                assert await page.inner_text("#triage-key") == "planted:1"
                routing = await page.inner_text("#triage .record .route")
                assert f"primary {logged['route']}" in routing
                assert f"reason {logged['reason']}" in routing
                assert f"secondary {logged['secondary']}" in routing
                triaged = await page.inner_text("#triage")
                assert "extra_in_shadow on get" in triaged
                assert "not recorded" in triaged
                assert "only" not in triaged
                assert f"{logged['shadow_size']} bytes" in triaged  # new's document: its size, not its text
                # A record with its values recorded shows them, and its writes pending or settled (the
                # page's own drawing of one, as /discrepancies.json would give it under record_values).
                recorded = await page.evaluate(
                    """r => { const div = document.createElement('div'); div.innerHTML = record(r);
                              return [div.textContent, [...div.querySelectorAll('.pending, .settled')]
                                      .map(e => e.className + ' ' + e.textContent)]; }""",
                    {**logged, "values": True, "primary": None, "shadow": '{"only": "new"}',
                     "writes": [{"time": 1.0, "op": "set", "source": "old", "target": "new", "state": "settled"},
                                {"time": 2.0, "op": "delete", "source": "old", "target": "new", "state": "pending"}]})
                assert '{"only": "new"}' in recorded[0]
                assert "(absent)" in recorded[0]
                assert "not recorded" not in recorded[0]
                assert recorded[1] == ["settled settled", "pending pending"]
                # The expired rule: in red, with whose it is to remove.
                rule = await page.inner_text("#rules-rows tr")
                assert "^cart:" in rule
                assert "EXPIRED" in rule
                assert "owner carts-team should remove it" in rule
                assert await page.eval_on_selector("#rules-rows tr", "r => r.classList.contains('expired')")
                assert await page.eval_on_selector("#rules-rows tr td",
                                                   "td => getComputedStyle(td).color") == "rgb(248, 81, 73)"
                await wait_until(page, """() => [...document.querySelectorAll('#chart-calls path.series')]
                                          .some(p => (p.getAttribute('d').match(/L/g) || []).length >= 2)""")
                for chart in ("calls", "errors", "latency-old", "latency-new", "discrepancies", "replication"):
                    paths = await page.eval_on_selector_all(f"#chart-{chart} path.series",
                                                            "ps => ps.map(p => p.getAttribute('d'))")
                    assert paths, chart
                    assert all(d.startswith("M") and d.count("L") >= 1 for d in paths), chart
                latency = await page.inner_text("#latency-new")
                assert "p99" in latency
                score = await page.inner_text("#score")
                assert 0 <= int(score) <= 100
                assert "score = max(0, 100 - sum of penalties)" in await page.inner_text("#formula")
                terms = await page.eval_on_selector_all("#score-terms tr", "rows => rows.map(r => r.textContent)")
                assert [t.split("\u2212")[0] for t in terms] == ["discrepancies", "errors", "latency", "inconclusive",
                                                                 "unhealthy_backends", "replication_lag", "verify"]
                assert "healthy" in await page.inner_text("#backends")
                assert await page.inner_text("#serving") == "serving"
                shot = await page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
                width, height = png_size(shot)
                assert width == 1366
                assert height >= 768
                assert len(shot) > 20_000  # a drawn page, not a blank one
                columns = await page.evaluate("getComputedStyle(document.querySelector('main'))"
                                              ".gridTemplateColumns.split(' ').length")
                await page.set_viewport_size({"width": 2560, "height": 1440})
                wall = await page.evaluate("getComputedStyle(document.querySelector('main'))"
                                           ".gridTemplateColumns.split(' ').length")
                assert 2 <= columns < wall  # the wall screen gets more columns, not just wider ones
                stop.set()
                assert await load > 0
            # No verify yet: the coverage panel says shares are unknown.
            assert "no verify recorded" in await page.inner_text("#coverage-note")
            # planted:1 is in new only: the verify finds it, so it exits 1.
            verified = await asyncio.to_thread(run_turnout, proxy.config, "verify", "--live", expect=1)
            users = verified["prefixes"]["user:"]
            assert users["keys"] == users["agree"] == 25  # the traffic's even-numbered users
            await wait_until(page, """() => [...document.querySelectorAll('#coverage-rows tr')]
                                      .some(r => r.dataset.prefix === 'user:' && r.cells[1].textContent === '25')""")
            cells = await page.eval_on_selector("#coverage-rows tr[data-prefix='user:']",
                                                "r => [...r.cells].map(c => c.textContent)")
            assert cells[2].startswith("25 ")  # 25 compared in shadow, of 25
            assert "100.0 %" in cells[2]
            assert "25 equal" in cells[4]
            assert "100.0 %" in cells[4]
            assert "ago" in cells[3]
            assert "ago" in cells[5]
            assert await page.inner_text("#coverage-note") == ""
            assert not await page.evaluate("document.body.classList.contains('down')")
            proxy.stop()
            await wait_until(page, "() => document.body.classList.contains('down')")
            banner = await page.inner_text("#banner")
            assert banner.startswith("proxy not answering since ")
            assert await page.evaluate("getComputedStyle(document.querySelector('main')).opacity") != "1"
            assert requested
            assert all(url.startswith(origin) for url in requested), requested
            assert f"{origin}dashboard.json" in requested
    finally:
        proxy.stop()


async def test_the_dashboard_shows_every_workers_calls(tmp_path: Path) -> None:
    """Under `--workers 2` the page lists both workers as answering and counts the calls served."""
    proxy = proxy_in(tmp_path, ("--workers", "2")).start()
    try:
        origin = f"http://{http_address(tmp_path / 'state')}/"
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1366, "height": 768})
            await page.goto(origin)
            await wait_until(page, "() => document.getElementById('workers').textContent.startsWith('2 of 2')")
            stop = asyncio.Event()
            async with AsyncClient(proxy.target, timeout=5, retry=RetryPolicy(attempts=1)) as client:
                load = asyncio.create_task(traffic(client, stop))
                await wait_until(page, "() => parseFloat(document.getElementById('calls-now').textContent) > 5")
                stop.set()
                assert await load > 0
            assert (await page.inner_text("#phase")).startswith("1 shadow")
    finally:
        proxy.stop()
