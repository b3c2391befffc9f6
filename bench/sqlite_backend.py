"""The SQLite backend's write and read rates, each beside a baseline measured in the same run.

    .venv/bin/python bench/sqlite_backend.py [--seconds 2] [--json bench/results/sqlite_backend.json] [--dir DIR]

Writes: sets/s with 16 concurrent writers through the backend (group commit: one COMMIT, so one
fsync, for every write queued meanwhile) against one transaction per set on a plain sqlite3
connection opened as the backend opens its own (so with the same pragmas: WAL, synchronous=FULL),
which is what a backend without group commit pays. Reads: gets/s with 16 concurrent readers
through the backend (a hop to a reader thread per get, so the event loop never blocks) against raw
sqlite3 point reads on the calling thread. Every case runs for a fixed time on its own fresh file.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.concurrency import run_concurrently
from bench.report import Figure, print_table, save, with_ratio
from proxy.backends.sqlite import SqliteBackend
from proxy.backends.sqlitefile import prepared

WORKERS = 16
KEYS = 10_000
DOC = b'{"name": "someone", "visits": 12, "tags": ["a", "b"]}'


def key(i: int) -> str:
    return f"user:{i % KEYS:05}"


def seed(path: Path) -> None:
    connection = prepared(path)
    with connection:
        connection.execute("BEGIN")
        connection.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                               [(key(i), DOC) for i in range(KEYS)])
    connection.close()


def raw_sets(path: Path, seconds: float) -> Figure:
    """Baseline: each set is its own transaction, so each pays its own fsync."""
    seed(path)
    connection = prepared(path)  # the backend's own opening, so its pragmas by construction
    done = 0
    stop = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < stop:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key(done * 7919), DOC))
        connection.execute("COMMIT")
        done += 1
    elapsed = time.monotonic() - started
    connection.close()
    return Figure("raw sqlite3, one transaction per set", done / elapsed, "sets/s")


async def backend_sets(path: Path, seconds: float, writers: int) -> Figure:
    seed(path)
    backend = await SqliteBackend.open(path)

    async def write(i: int) -> None:
        await backend.set(key(i), DOC)

    commits_before = backend.commits
    measured = await run_concurrently(write, writers, seconds, step=1)
    commits = backend.commits - commits_before
    await backend.close()
    name = f"backend set, {writers} concurrent writer{'s' if writers > 1 else ''}"
    return Figure(name, measured.rate, "sets/s", extra={"sets_per_commit": measured.calls / max(commits, 1)})


def raw_gets(path: Path, seconds: float) -> Figure:
    """Baseline: point reads on the calling thread, the least any read path can cost."""
    seed(path)
    connection = sqlite3.connect(path, isolation_level=None)
    done = 0
    stop = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < stop:
        for _ in range(100):  # check the clock once per 100 reads so the clock is not what is measured
            row = connection.execute("SELECT value FROM kv WHERE key = ?", (key(done * 7919),)).fetchone()
            assert row is not None
            done += 1
    elapsed = time.monotonic() - started
    connection.close()
    return Figure("raw sqlite3 get, calling thread", done / elapsed, "gets/s")


async def backend_gets(path: Path, seconds: float) -> Figure:
    seed(path)
    backend = await SqliteBackend.open(path)

    async def read(i: int) -> None:
        assert await backend.get(key(i)) is not None

    measured = await run_concurrently(read, WORKERS, seconds)
    await backend.close()
    return Figure(f"backend get, {WORKERS} concurrent readers", measured.rate, "gets/s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per case")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    # The files must sit on the kind of disk a real store uses: on a tmpfs fsync is free, which
    # hides what group commit saves.
    parser.add_argument("--dir", type=Path, help="folder for the temporary stores (default: system temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        one_per_set = raw_sets(folder / "raw-sets.sqlite", args.seconds)
        single = with_ratio(await backend_sets(folder / "single.sqlite", args.seconds, 1), one_per_set)
        grouped = with_ratio(await backend_sets(folder / "grouped.sqlite", args.seconds, WORKERS), one_per_set)
        raw_read = raw_gets(folder / "raw-gets.sqlite", args.seconds)
        read = with_ratio(await backend_gets(folder / "gets.sqlite", args.seconds), raw_read)
    figures = [one_per_set, single, grouped, raw_read, read]
    print_table(f"SQLite backend, {KEYS} keys, WAL + synchronous=FULL", figures)
    for f in (single, grouped):
        print(f"  {f.case}: {f.extra['sets_per_commit']:.1f} sets per commit")
    save(args.json, "sqlite_backend", figures)


if __name__ == "__main__":
    asyncio.run(main())
