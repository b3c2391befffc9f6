"""What the guard costs: microseconds per evaluation, against one hot-path record in the same run.

    .venv/bin/python bench/guard.py [--pairs 10] [--workers 1,4] [--evaluations 300] [--rounds 3]
                                    [--json bench/results/guard.json]

One evaluation is what the guard does once per period (proxy.safety.guard.evaluate_once, without
its I/O): read the counters of a real Metrics holding --pairs backend/op latency histograms
(Counters.read), take the reading into the health window, work out the window's figures and judge
every trigger. With N workers, worker 0 reads its own counters and gets the other N-1 as the JSON
document of the Counters RPC: their serialising and parsing is counted, the loopback RPC is not.
Between evaluations (untimed) every pair takes a few more calls, so each window has something to
sum. The baseline is one `Metrics.backend_call` (the record every backend call makes on the hot
path): the ratio says "one evaluation costs as much as this many hot-path records", and the share
of one core is what an evaluation per second (the guard's period) takes.
Each figure is the best of --rounds, since other work on a shared machine only ever takes from it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import Figure, add_round_options, best_of_rounds, print_table, save, with_ratio
from proxy.data.discrepancies import Report
from proxy.routing.safetyflags import Triggers
from proxy.safety.counters import Counters
from proxy.safety.guard import EVALUATION_PERIOD_S
from proxy.safety.triggers import evaluate
from proxy.safety.window import HealthWindow
from proxy.telemetry.metrics import Metrics

OPS = ("get", "set", "has", "delete", "keys")
BASELINE = "Metrics.backend_call (baseline)"
#: The window the bench judges: every trigger armed, a window of ten periods.
TRIGGERS = Triggers(error_rate=0.01, latency_increase=0.2, discrepancy_rate=0.05, window_s=10.0, min_calls=20)


def pairs(count: int) -> list[tuple[str, str]]:
    """count (backend, op) pairs: old and new for each operation, then made-up operations."""
    names = [*OPS, *(f"op{n}" for n in range(max(0, count // 2 - len(OPS) + 1)))]
    return [(backend, op) for op in names for backend in ("old", "new")][:count]


def filled_metrics(keys: list[tuple[str, str]], records: int, rng: random.Random) -> Metrics:
    """A Metrics whose histograms hold `records` calls per pair, spread over the latency buckets."""
    metrics = Metrics()
    for backend, op in keys:
        for _ in range(records):
            metrics.backend_call(backend, op, rng.lognormvariate(-6.0, 1.0), rng.random() < 0.001)
    return metrics


def record_rate(calls: int) -> float:
    """Hot-path records per second: backend_call into an existing histogram."""
    metrics = Metrics()
    metrics.backend_call("new", "get", 0.001, False)
    latencies = [0.0005 * (1 + i % 50) for i in range(calls)]
    started = time.perf_counter()
    for seconds in latencies:
        metrics.backend_call("new", "get", seconds, False)
    return calls / (time.perf_counter() - started)


def evaluation_rate(workers: int, keys: list[tuple[str, str]], records: int, evaluations: int) -> float:
    """Evaluations per second, timing only the evaluation (not the calls made between them)."""
    rng = random.Random(workers)
    metrics = [filled_metrics(keys, records, rng) for _ in range(workers)]
    report = Report()
    report.compared.update({op: records for op in OPS})
    window = HealthWindow()
    keep = TRIGGERS.window_s + 3 * EVALUATION_PERIOD_S
    spent = 0.0
    for n in range(evaluations):
        for worker in metrics:  # traffic between two evaluations: untimed
            for backend, op in keys:
                for _ in range(3):
                    worker.backend_call(backend, op, rng.lognormvariate(-6.0, 1.0), False)
        report.compared["get"] += 5
        now = float(n) * EVALUATION_PERIOD_S
        started = time.perf_counter()
        readings = {"0": Counters.read(metrics[0], report, 1.0)}
        for index, worker in enumerate(metrics[1:], start=1):  # what the Counters RPC carries
            wire = json.dumps(Counters.read(worker, report, 1.0).to_document())
            readings[str(index)] = Counters.from_document(json.loads(wire))
        window.add(now, readings, keep)
        evaluate(window.figures(now, TRIGGERS.window_s), TRIGGERS)
        spent += time.perf_counter() - started
    return evaluations / spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=10, help="backend/op latency histograms per worker")
    parser.add_argument("--records", type=int, default=1000, help="calls each histogram holds to begin with")
    parser.add_argument("--workers", default="1,4", help="comma-separated worker counts whose readings are summed")
    parser.add_argument("--evaluations", type=int, default=300, help="evaluations per case and round")
    parser.add_argument("--calls", type=int, default=200_000, help="hot-path records timed for the baseline")
    add_round_options(parser)
    args = parser.parse_args()
    try:
        counts = [int(part) for part in args.workers.split(",") if part.strip()]
    except ValueError:
        parser.error(f"--workers: a comma-separated list of worker counts, not {args.workers!r}")
    if not counts or min(counts) < 1 or args.pairs < 1 or args.evaluations < 1 or args.calls < 1:
        parser.error("--workers, --pairs, --evaluations and --calls must be positive")
    keys = pairs(args.pairs)

    cases = [BASELINE, *(f"evaluation, {n} worker{'s' if n > 1 else ''}, {len(keys)} pairs" for n in counts)]
    workers_of = dict(zip(cases[1:], counts, strict=True))

    def measure(case: str) -> float:
        if case == BASELINE:
            return record_rate(args.calls)
        return evaluation_rate(workers_of[case], keys, args.records, args.evaluations)

    best = best_of_rounds(args.rounds, cases, measure)
    baseline = Figure(BASELINE, 1e6 / best[BASELINE], "µs")
    figures = [baseline]
    for case in cases[1:]:
        micros = 1e6 / best[case]
        # One evaluation per period: the share of one core the guard keeps busy.
        share = micros / 1e6 / EVALUATION_PERIOD_S * 100
        figures.append(with_ratio(Figure(case, micros, "µs", extra={"core_percent_at_one_per_second": share}),
                                  baseline))
    print_table("The guard's evaluation in µs vs one hot-path record (ratio: records per evaluation)", figures)
    print(f"{BASELINE}: {baseline.value:.3f} µs per record")
    for figure in figures[1:]:
        print(f"{figure.case}: {figure.value:.1f} µs per evaluation, "
              f"{figure.extra['core_percent_at_one_per_second']:.4f} % of one core at one evaluation per second, "
              f"as much as {figure.ratio or 0:.0f} hot-path records")
    save(args.json, "guard", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
