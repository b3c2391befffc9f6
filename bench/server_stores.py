"""The proxy over each server store (postgres, redis, a grpc upstream) against the proxy over memory
stores, and the latency the proxy adds to one call against the same server's own client, in one run.

    .venv/bin/python bench/server_stores.py [--stores postgres,redis,grpc] [--duration 5] [--warmup 2]
        [--calls 2000] [--load auto|h2load|python] [--rounds 1] [--json OUT]

Servers, each started for the run on 127.0.0.1 and stopped by pid at the end: one PostgreSQL
(initdb'd into a temporary folder, as the tests start it), one standalone redis-server
(appendonly, appendfsync always, as the tests run it), one upstream `turnout serve` on memory
stores (the `grpc` store's server), and per store a proxy under test: a real `turnout serve` with
that store as `old` and default flags (route old), so every call goes to the store.

1. Throughput: Get and Set flat out (bench/load.py, 4 connections x 16 streams by default),
   requests/s with p50 and p99, each read as a ratio to the proxy over memory stores, same op.
   Get loads with h2load when installed (one key, preloaded). Set always loads with the Python
   client over 1000 keys: h2load sends one body, so one key, and a server store keeps each key's
   writes in order (one at a time per key), so one-key Sets would measure that queue alone.
2. Added latency: --calls sequential calls through the proxy, interleaved one for one with the
   same call made directly by the server's own client (psycopg / redis-py / a plain KeyValue stub
   on the upstream) from this process; both p50s and their difference in microseconds. The proxy
   over memory stores gives the same loop's p50 without a store, for reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import psycopg
import redis
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from bench.cases import MEMORY, Server
from bench.load import SET_VALUE, LoadResult, LoadSpec, generate, h2load_available, preload
from bench.report import Figure, chosen_stores, print_table, save, with_ratio
from bench.servers import RunningServer
from proxy.backends.postgresschema import Statements
from tests.support.servers.postgres import PostgresServer
from tests.support.servers.redis import RedisNode, RedisServer, free_port

STORES = ("postgres", "redis", "grpc")
TABLE = "kv_proxy"
PREFIX = "p:"
#: The key of the latency loop, in every store: set once before the loop so Get measures a hit.
LATENCY_KEY = "bench:latency"
SET_KEYS = 1000


@dataclass
class Backing:
    """The servers a proxy's store talks to, and a direct call of each by its own client."""

    config: dict[str, Any]  # the store's mapping in the proxy's config
    direct: dict[str, Callable[[], object]]  # "Get"/"Set": one call straight to the server


@contextmanager
def postgres_backing() -> Iterator[Backing]:
    with tempfile.TemporaryDirectory(prefix="turnout-bench-pg-") as folder:
        server = PostgresServer(Path(folder))
        server.create()
        try:
            statements = Statements(TABLE)
            with psycopg.connect(server.dsn, autocommit=True) as connection:
                connection.execute(statements.create)
                document = SET_VALUE.decode()
                # The store's own statements, so the two sides differ only by the proxy in between.
                direct: dict[str, Callable[[], object]] = {
                    "Get": lambda: connection.execute(statements.get, (LATENCY_KEY,)).fetchone(),
                    "Set": lambda: connection.execute(statements.upsert, (LATENCY_KEY, document)),
                }
                yield Backing({"type": "postgres", "dsn": server.dsn, "table": TABLE}, direct)
        finally:
            server.stop()


@contextmanager
def redis_backing() -> Iterator[Backing]:
    with tempfile.TemporaryDirectory(prefix="turnout-bench-redis-") as folder:
        node = RedisNode(free_port(), Path(folder))
        try:
            node.start()
            url = RedisServer(node).url
            stored = (PREFIX + LATENCY_KEY).encode()
            with redis.Redis.from_url(url) as client:
                yield Backing({"type": "redis", "url": url, "key_prefix": PREFIX},
                              {"Get": lambda: client.get(stored), "Set": lambda: client.set(stored, SET_VALUE)})
        finally:
            node.stop()


@contextmanager
def upstream_backing() -> Iterator[Backing]:
    with tempfile.TemporaryDirectory(prefix="turnout-bench-upstream-") as folder, \
            RunningServer(Server("upstream", "proxy"), Path(folder)) as upstream, \
            grpc.insecure_channel(upstream.target) as channel:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        get, put = kv_pb2.GetRequest(key=LATENCY_KEY), kv_pb2.SetRequest(key=LATENCY_KEY, value=SET_VALUE)
        yield Backing({"type": "grpc", "target": upstream.target},
                      {"Get": lambda: stub.Get(get, timeout=10), "Set": lambda: stub.Set(put, timeout=10)})


BACKINGS: dict[str, Callable[[], Any]] = {"postgres": postgres_backing, "redis": redis_backing,
                                          "grpc": upstream_backing}


def load(target: str, op: str, args: argparse.Namespace) -> LoadResult:
    tool = args.load
    if tool == "auto":
        tool = "h2load" if op == "Get" and h2load_available() else "python"
    if tool == "h2load" and op == "Set":
        tool = "python"  # see the module docstring: one-key Sets measure a store's per-key write queue
    keys = 1 if tool == "h2load" else SET_KEYS
    if op == "Get":
        preload(target, keys)
    spec = LoadSpec(target, op, args.duration, args.warmup, args.connections, args.streams, keys=keys,
                    processes=args.processes)
    return generate(spec, tool)


def p50_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def latency_loop(target: str, op: str, calls: int, direct: Callable[[], object] | None) -> tuple[float, float | None]:
    """p50 of calls sequential proxy calls, and of as many direct calls interleaved with them."""
    with grpc.insecure_channel(target) as channel:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        get, put = kv_pb2.GetRequest(key=LATENCY_KEY), kv_pb2.SetRequest(key=LATENCY_KEY, value=SET_VALUE)

        def through_proxy() -> object:
            return stub.Get(get, timeout=10) if op == "Get" else stub.Set(put, timeout=10)

        stub.Set(put, timeout=10)  # the key exists, so every Get is a hit
        if direct is not None:
            direct()
        for _ in range(min(200, calls)):  # warm: connections, prepared statements, caches
            through_proxy()
            if direct is not None:
                direct()
        proxied: list[float] = []
        directly: list[float] = []
        for _ in range(calls):
            started = time.perf_counter()
            through_proxy()
            proxied.append(time.perf_counter() - started)
            if direct is not None:
                started = time.perf_counter()
                direct()
                directly.append(time.perf_counter() - started)
    return p50_us(proxied), (p50_us(directly) if direct is not None else None)


@dataclass
class Measured:
    store: str
    load: dict[str, LoadResult]  # by op, the best round
    proxy_p50_us: dict[str, float]
    direct_p50_us: dict[str, float | None]


def measure_proxy(store: str, old: dict[str, Any], direct: dict[str, Callable[[], object]] | None,
                  args: argparse.Namespace) -> Measured:
    print(f"  proxy over {store} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=f"turnout-bench-proxy-{store}-") as folder, \
            RunningServer(Server(f"proxy-{store}", "proxy", old=old, new=MEMORY), Path(folder)) as proxy:
        best: dict[str, LoadResult] = {}
        for _ in range(args.rounds):
            for op in ("Get", "Set"):
                result = load(proxy.target, op, args)
                if op not in best or result.rps > best[op].rps:
                    best[op] = result
        proxied: dict[str, float] = {}
        directly: dict[str, float | None] = {}
        for op in ("Get", "Set"):
            proxied[op], directly[op] = latency_loop(proxy.target, op, args.calls,
                                                     None if direct is None else direct[op])
    return Measured(store, best, proxied, directly)


def figures_of(baseline: Measured, measured: list[Measured]) -> list[Figure]:
    figures: list[Figure] = []
    for op in ("Get", "Set"):
        base = baseline.load[op]
        floor = Figure(f"proxy over memory {op}", base.rps, "req/s",
                       extra={"p50_ms": base.p50_ms, "p99_ms": base.p99_ms, "errors": base.errors})
        figures.append(floor)
        for each in measured:
            result = each.load[op]
            figures.append(with_ratio(Figure(f"proxy over {each.store} {op}", result.rps, "req/s",
                                             extra={"p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                                                    "errors": result.errors}), floor))
    for op in ("Get", "Set"):
        figures.append(Figure(f"sequential {op}: proxy over memory p50", baseline.proxy_p50_us[op], "us"))
        for each in measured:
            direct = each.direct_p50_us[op]
            assert direct is not None
            proxied = each.proxy_p50_us[op]
            figures.append(Figure(f"sequential {op}: direct {each.store} p50", direct, "us"))
            figures.append(Figure(f"sequential {op}: proxy over {each.store} p50", proxied, "us",
                                  baseline=f"direct {each.store}", ratio=proxied / direct,
                                  extra={"added_us": proxied - direct}))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated: postgres, redis, grpc")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per load case")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2, help="Python load client processes")
    parser.add_argument("--load", choices=["auto", "h2load", "python"], default="auto")
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls of the latency loop per op")
    parser.add_argument("--rounds", type=int, default=1, help="load every case this many times, keep the best")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    wanted = chosen_stores(parser, args.stores, STORES)
    baseline = measure_proxy("memory", dict(MEMORY), None, args)
    measured: list[Measured] = []
    for store in wanted:
        with ExitStack() as stack:
            backing: Backing = stack.enter_context(BACKINGS[store]())
            measured.append(measure_proxy(store, backing.config, backing.direct, args))
    figures = figures_of(baseline, measured)
    print_table(f"proxy over server stores, route old, {args.connections}x{args.streams} in flight", figures)
    print("\nlatency (load cases: p50 / p99 ms; sequential: added p50 per call over the direct client)")
    for f in figures:
        if "p99_ms" in f.extra:
            print(f"  {f.case:<36} p50 {f.extra['p50_ms']:7.2f} ms  p99 {f.extra['p99_ms']:7.2f} ms"
                  f"  errors {f.extra['errors']:.0f}")
        elif "added_us" in f.extra:
            print(f"  {f.case:<36} {f.value:8.0f} us vs {f.baseline} ({f.extra['added_us']:+.0f} us per call)")
    save(args.json, "server_stores", figures)


if __name__ == "__main__":
    main()
