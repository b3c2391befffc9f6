"""Calls per second through the dispatcher alone (no gRPC), each mode beside route old in the same run.

    .venv/bin/python bench/dispatcher.py [--calls 20000] [--rounds 3] [--json bench/results/dispatcher.json]

What the proxy adds on top of a backend call, without the gRPC server around it: routing, the
per-key lock, the replication intent, the shadow call and its comparison. Memory backends, so the
figures are the dispatcher's own cost; the replication queue keeps its intents in a real SQLite file,
as in the proxy. 32 callers at once, on one hot key (what h2load sends) and spread over 1000 keys.
Each figure is the best of --rounds, the modes interleaved, so a noisy moment hits one round of each.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import Figure, add_round_options, best_of_rounds, print_table, save, with_ratio
from proxy.backends.memory import MemoryBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.data.discrepancies import DiscrepancyLog
from proxy.data.dispatcher import Call, Dispatcher
from proxy.data.keylocks import KeyLocks
from proxy.replication.local import ReplicationQueue
from proxy.routing.flags import Flags
from proxy.routing.router import Route, Router

CALLERS = 32
VALUE = b'{"name":"Ada","visits":3}'
MODES: dict[str, Flags] = {
    "route old": Flags(),
    "shadow": Flags(use_new_storage=True, shadow_mode_enabled=True),
    "split 50/50": Flags(use_new_storage=True, read_percentage=50, write_percentage=50),
}


class _Routes:
    def __init__(self, flags: Flags) -> None:
        self.router = Router(flags)


async def calls_per_second(flags: Flags, op: str, calls: int, keys: int, folder: Path) -> float:
    """Run `calls` operations from CALLERS concurrent callers; includes letting queued work finish."""
    old, new = MemoryBackend(), MemoryBackend()
    names = [f"bench:{i:05}" for i in range(keys)]
    for name in names:
        await old.set(name, VALUE)
        await new.set(name, VALUE)
    store = await SqliteBackend.open(folder / "replication.sqlite")
    locks = KeyLocks()
    queue = ReplicationQueue(store, {"old": old, "new": new}, locks)
    queue.start()
    log = DiscrepancyLog(folder)
    log.start()
    dispatcher = Dispatcher({Route.OLD: old, Route.NEW: new}, _Routes(flags), queue, locks, log)

    async def caller(n: int) -> None:
        call = Call()
        for i in range(calls // CALLERS):
            key = names[(n * 7919 + i) % keys]
            if op == "Get":
                await dispatcher.get(key, call)
            else:
                await dispatcher.set(key, VALUE, call)

    started = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(CALLERS)))
    await dispatcher.close()
    await queue.drain(30)
    elapsed = time.perf_counter() - started
    await queue.stop()
    await log.stop()
    await store.close()
    return calls // CALLERS * CALLERS / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20_000, help="operations per case and round")
    add_round_options(parser)
    args = parser.parse_args()

    cases = [(op, keys, mode) for op in ("Get", "Set") for keys in (1, 1000) for mode in MODES]
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as scratch:

        def measure(case: tuple[str, int, str]) -> float:
            op, keys, mode = case
            folder = Path(tempfile.mkdtemp(dir=scratch))  # a fresh queue and discrepancy log per run
            return uvloop.run(calls_per_second(MODES[mode], op, args.calls, keys, folder))

        best = best_of_rounds(args.rounds, cases, measure)
    figures: list[Figure] = []
    for op in ("Get", "Set"):
        for keys in (1, 1000):
            baseline = Figure(f"{op}, {keys} key(s), route old", best[op, keys, "route old"], "calls/s",
                              extra={"us_per_call": 1e6 / best[op, keys, "route old"]})
            figures.append(baseline)
            for mode in MODES:
                if mode != "route old":
                    rate = best[op, keys, mode]
                    figure = Figure(f"{op}, {keys} key(s), {mode}", rate, "calls/s", extra={"us_per_call": 1e6 / rate})
                    figures.append(with_ratio(figure, baseline))
    print_table("Dispatcher calls per second (no gRPC), each mode vs route old", figures)
    for figure in figures:
        print(f"  {figure.case}: {figure.extra['us_per_call']:.1f} us per call")
    save(args.json, "dispatcher", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
