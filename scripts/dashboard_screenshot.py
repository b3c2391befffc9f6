"""Make docs/dashboard.png: a real `turnout serve` on two SQLite stores (a gradual switchover at 25 %
with shadow mode, rollback triggers and two comparison rules, one expired yesterday), traffic from
the real client that rises halfway, a live migrate, documents differing only where a rule lets pass,
a few discrepancies planted in new behind the proxy's back, a live verify (so the coverage panel has
key counts), one discrepancy clicked open for its triage record, and the page as headless Chromium
draws it at laptop size (1366 wide).

    .venv/bin/python scripts/dashboard_screenshot.py [--seconds 90] [--out docs/dashboard.png] [--json]

Everything listens on 127.0.0.1 and lives in a temporary folder; the proxy is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file, from anywhere

from playwright.async_api import async_playwright
from turnout import AsyncClient, KeyNotFound, RetryPolicy, TurnoutError

from proxy.backends.sqlitefile import prepare_file
from proxy.progress import Progress
from tests.support.paths import ROOT
from tests.support.proxy_process import ProxyProcess, cli_command, http_address, write_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
FLAGS = """revision: gradual-25
use_new_storage: true
shadow_mode_enabled: true
traffic_percentage: {read: 25, write: 25}
rollback_triggers: {error_rate: 0.05, discrepancy_rate: 0.05, window: 60s, min_calls: 50}
comparison_rules:
  - {keys: '^profile:', ignore_fields: [$.updated_at], owner: accounts-team, expires: 2999-12-31,
     reason: the new store stamps its own write time}
  - {keys: '^cart:', ignore_fields: [$.seen], owner: carts-team, expires: {yesterday}}
"""
SEEDED = 20_000
PROFILES = 40


def seed(folder: Path) -> Path:
    """The legacy store holding SEEDED items for the migrate to copy; new empty."""
    for name in ("old.sqlite", "new.sqlite"):
        prepare_file(folder / name)
    with sqlite3.connect(folder / "old.sqlite") as db:
        db.executemany("INSERT INTO kv (key, value) VALUES (?, ?)",
                       ((f"item:{n:05}", json.dumps({"n": n}).encode()) for n in range(SEEDED)))
        db.executemany("INSERT INTO kv (key, value) VALUES (?, ?)",
                       ((f"profile:{n:03}", json.dumps({"n": n, "updated_at": "2026-01-01"}).encode())
                        for n in range(PROFILES)))
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    (folder / "flags.yaml").write_text(FLAGS.replace("{yesterday}", yesterday.isoformat()), encoding="utf-8")
    return write_config(folder, old={"type": "sqlite", "path": "old.sqlite"},
                        new={"type": "sqlite", "path": "new.sqlite"})


async def traffic(client: AsyncClient, stop: asyncio.Event, pause: list[float]) -> int:
    """Set and read back 200 user keys until stopped, pause[0] seconds between pairs; returns the calls."""
    calls = 0
    while not stop.is_set():
        key = f"user:{calls % 200:03}"
        with contextlib.suppress(TurnoutError):
            await client.set(key, {"n": calls, "name": f"user {calls % 200}"})
            await client.get(key)
        calls += 2
        await asyncio.sleep(pause[0])
    return calls


async def plant(folder: Path, client: AsyncClient, count: int) -> None:
    """Keys only new holds, written behind the proxy's back, then read through it (extra_in_shadow)."""
    with sqlite3.connect(folder / "new.sqlite") as db:
        db.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                       ((f"order:{n:04}", b'{"stray": true}') for n in range(count)))
    for n in range(count):
        with contextlib.suppress(KeyNotFound):
            await client.get(f"order:{n:04}")


async def stamp_profiles(folder: Path, client: AsyncClient) -> None:
    """Profiles that new holds with its own write time, read through the proxy: the live rule lets
    those differences pass (its hits)."""
    with sqlite3.connect(folder / "new.sqlite") as db:
        db.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                       ((f"profile:{n:03}", json.dumps({"n": n, "updated_at": "2026-06-01"}).encode())
                        for n in range(PROFILES)))
    for n in range(PROFILES):
        with contextlib.suppress(KeyNotFound):
            await client.get(f"profile:{n:03}")


async def scene(folder: Path, seconds: float, out: Path, size: tuple[int, int]) -> dict[str, Any]:
    config = seed(folder)
    proxy = ProxyProcess(config).start()
    migrate: asyncio.subprocess.Process | None = None
    verify: asyncio.subprocess.Process | None = None
    try:
        http = http_address(folder / "state")
        async with async_playwright() as p, \
                AsyncClient(proxy.target, timeout=5, retry=RetryPolicy(attempts=1)) as client:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": size[0], "height": size[1]})
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            await page.goto(f"http://{http}/")
            stop, pause = asyncio.Event(), [0.02]
            load = asyncio.create_task(traffic(client, stop, pause))
            progress = Progress("dashboard scene", int(seconds))
            started = time.monotonic()
            planted = stamped = False
            while (elapsed := time.monotonic() - started) < seconds:
                if migrate is None and elapsed > seconds * 0.1:
                    # Slow on purpose, so the charts show it running; done before the verify.
                    migrate = await asyncio.create_subprocess_exec(
                        *cli_command(config, "migrate", "--live", "--rate", "500"), "--json", cwd=ROOT,
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                if not stamped and migrate is not None and migrate.returncode is not None:
                    await stamp_profiles(folder, client)
                    stamped = True
                if verify is None and stamped and planted and elapsed > seconds * 0.8:
                    # Its key counts by prefix are what the coverage panel's shares are of.
                    verify = await asyncio.create_subprocess_exec(
                        *cli_command(config, "verify", "--live"), "--json", cwd=ROOT,
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                if pause[0] > 0.004 and elapsed > seconds * 0.5:
                    pause[0] = 0.002  # traffic rises halfway
                if not planted and elapsed > seconds * 0.7:
                    await plant(folder, client, 3)
                    planted = True
                await asyncio.sleep(1)
                progress.advance(1)
            progress.close()
            if verify is not None:
                await verify.wait()
            await asyncio.sleep(2.5)  # one more poll of the page
            # One planted discrepancy opened for its triage record, as an operator would.
            await page.click("#latest tr[data-key]")
            await page.wait_for_selector("#triage .record", timeout=10_000)
            shot = await page.screenshot(path=out, full_page=True)
            score = await page.inner_text("#score")
            phase = await page.inner_text("#phase")
            stop.set()
            calls = await load
            await browser.close()
        outside = [url for url in requested if not url.startswith(f"http://{http}/")]
        return {"screenshot": str(out), "bytes": len(shot), "calls": calls, "phase": phase,
                "score": int(score), "requests": len(requested), "requests_elsewhere": outside,
                "migrated": migrate is not None and migrate.returncode is not None, "verified": verify is not None}
    finally:
        if verify is not None and verify.returncode is None:
            verify.terminate()
            await verify.wait()
        if migrate is not None and migrate.returncode is None:
            migrate.terminate()
            await migrate.wait()
        proxy.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="how long the traffic runs before the picture")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--size", default="1366x768", help="the window, WIDTHxHEIGHT (2560x1440: a wall screen)")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="turnout-dashboard-") as folder:
        width, _, height = args.size.partition("x")
        result = asyncio.run(scene(Path(folder), args.seconds, args.out.resolve(), (int(width), int(height))))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['screenshot']}: {result['bytes']} bytes; {result['calls']} calls; phase {result['phase']!r}; "
              f"score {result['score']}; {len(result['requests_elsewhere'])} requests elsewhere than the proxy")
    return 0 if not result["requests_elsewhere"] else 1


if __name__ == "__main__":
    sys.exit(main())
