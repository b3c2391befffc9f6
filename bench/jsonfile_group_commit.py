"""Sets per second on a 10k-key legacy JSON file with 16 concurrent writers: one rewrite per set vs group commit.

    .venv/bin/python bench/jsonfile_group_commit.py [--seconds 3] [--json bench/results/jsonfile.json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import Figure, print_table, save, with_ratio
from proxy.backends.jsonfile import JsonFileBackend

WRITERS = 16
KEYS = 10_000


async def measure(group_commit: bool, seconds: float, folder: Path) -> Figure:
    path = folder / ("group.json" if group_commit else "single.json")
    backend = await JsonFileBackend.open(path, group_commit=group_commit)
    await backend.set_many([(f"user:{i:05}", b'{"name": "someone", "visits": 12, "tags": ["a", "b"]}')
                            for i in range(KEYS)])
    done = 0
    stop = time.monotonic() + seconds

    async def writer(n: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < stop:
            await backend.set(f"user:{(n * 977 + i) % KEYS:05}", f'{{"visits": {i}}}'.encode())
            done += 1
            i += 1

    started = time.monotonic()
    rewrites_before = backend.rewrites
    await asyncio.gather(*(writer(n) for n in range(WRITERS)))
    elapsed = time.monotonic() - started
    rewrites = backend.rewrites - rewrites_before
    await backend.close()
    name = "jsonfile set, group commit" if group_commit else "jsonfile set, one rewrite per set"
    return Figure(name, done / elapsed, "sets/s", extra={"rewrites_per_s": rewrites / elapsed,
                                                          "sets_per_rewrite": done / max(rewrites, 1)})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        baseline = await measure(False, args.seconds, Path(folder))
        grouped = with_ratio(await measure(True, args.seconds, Path(folder)), baseline, target=10.0)
    figures = [baseline, grouped]
    print_table(f"legacy JSON file, {KEYS} keys, {WRITERS} concurrent writers", figures)
    for f in figures:
        print(f"  {f.case}: {f.extra['sets_per_rewrite']:.1f} sets per rewrite")
    save(args.json, "jsonfile_group_commit", figures)


if __name__ == "__main__":
    asyncio.run(main())
