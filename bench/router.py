"""Routes per second of Router.route() over typical flag sets, against a bare dict lookup in the same run.

    .venv/bin/python bench/router.py [--seconds 0.5] [--rounds 3] [--json bench/results/router.json]

Every case walks the same 10,000 keys (a quarter each user:, session:, cart:, billing:); the
baseline is `table[key]` over them (the least a lookup of anything per call can cost), and each
case's ratio is its routes/s over the baseline's lookups/s.
Each figure is the best of --rounds, since other work on a shared machine only ever takes from it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import Figure, add_round_options, best_of_rounds, print_table, save, with_ratio
from proxy.routing.flags import Flags
from proxy.routing.router import Op, Override, Route, Router, bucket

KEYS = [f"{('user', 'session', 'cart', 'billing')[i % 4]}:{i:06}" for i in range(10_000)]
CALLERS = [("checkout", "search", None, "billing-job")[i % 4] for i in range(len(KEYS))]

#: name -> (flags, override, operation)
CASES: dict[str, tuple[Flags, Override | None, Op]] = {
    "kill switch (shipped default)": (Flags(), None, Op.GET),
    "override to old": (Flags(use_new_storage=True, read_percentage=10), Override(Route.OLD, "bench", 0.0), Op.GET),
    "on, 0 %, no lists": (Flags(use_new_storage=True), None, Op.GET),
    "on, 100 %, no lists": (Flags(use_new_storage=True, read_percentage=100), None, Op.GET),
    "on, read 10 % (hashing)": (Flags(use_new_storage=True, read_percentage=10), None, Op.GET),
    "contract example (lists, users, 10 %)": (
        Flags(use_new_storage=True, shadow_mode_enabled=True, read_percentage=10, write_percentage=10,
              enabled_for_keys=("^session:",), disabled_for_keys=("^billing:",), enabled_for_users=("checkout",)),
        None, Op.GET),
    "contract example, writes": (
        Flags(use_new_storage=True, shadow_mode_enabled=True, read_percentage=10, write_percentage=10,
              enabled_for_keys=("^session:",), disabled_for_keys=("^billing:",), enabled_for_users=("checkout",)),
        None, Op.SET),
    "5 patterns per list, 50 %": (
        Flags(use_new_storage=True, read_percentage=50,
              enabled_for_keys=("^session:", "^cart:", "^tmp:", ":draft$", "^feature:[a-z]+:"),
              disabled_for_keys=("^billing:", "^invoice:", "^audit:", ":locked$", "^pii:")),
        None, Op.GET),
    # Patterns that are not plain anchored literals each need the regex engine on every call.
    "5 regexes per list, 0 %": (
        Flags(use_new_storage=True,
              enabled_for_keys=("^session:[0-9]+$", "^cart:[0-9]{6}", "(?i)^tmp:", "draft", "^feature:[a-z]+:"),
              disabled_for_keys=("^billing:[0-9]+", "invoice", "(?i)^audit:", "locked", "^pii:[a-z]")),
        None, Op.GET),
    "5 literal patterns per list matching no key, 0 %": (
        Flags(use_new_storage=True,
              enabled_for_keys=("^tmp:", "^feature:", "^draft:", ":draft$", "^queue:"),
              disabled_for_keys=("^invoice:", "^audit:", "^pii:", ":locked$", "^export:")),
        None, Op.GET),
}


def per_second(run_once: Callable[[], None], seconds: float) -> float:
    """Calls of one pass over KEYS per second, times the keys per pass."""
    passes = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        run_once()
        passes += 1
    return passes * len(KEYS) / (time.perf_counter() - started)


def dict_pass() -> Callable[[], None]:
    table = {key: Route.OLD for key in KEYS}

    def run() -> None:
        for key in KEYS:
            table[key]

    return run


def bucket_pass() -> Callable[[], None]:
    def run() -> None:
        for key in KEYS:
            bucket(key, "")

    return run


def route_pass(flags: Flags, override: Override | None, op: Op) -> Callable[[], None]:
    route = Router(flags, override).route
    pairs = list(zip(KEYS, CALLERS, strict=True))

    def run() -> None:
        for key, caller in pairs:
            route(op, key, caller)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.5, help="measured seconds per case and round")
    add_round_options(parser)
    args = parser.parse_args()

    runs: dict[str, Callable[[], None]] = {"dict lookup (baseline)": dict_pass(), "bucket() alone": bucket_pass()}
    runs |= {f"route: {name}": route_pass(*case) for name, case in CASES.items()}

    def measure(name: str) -> float:
        run = runs[name]
        run()  # warm the per-bucket decisions and the regex caches
        return per_second(run, args.seconds)

    best = best_of_rounds(args.rounds, list(runs), measure)
    baseline = Figure("dict lookup (baseline)", best.pop("dict lookup (baseline)"), "ops/s")
    figures = [baseline] + [with_ratio(Figure(name, value, "ops/s"), baseline) for name, value in best.items()]
    print_table("Router.route() per second vs a bare dict lookup", figures)
    save(args.json, "router", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
