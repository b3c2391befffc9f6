"""The redis store's get, set and set_many rates, each beside raw redis-py doing the same commands in the same run.

    .venv/bin/python bench/redis_store.py [--seconds 2] [--rounds 3] [--cluster] [--json OUT] [--dir DIR]

Starts its own redis-server (appendonly, appendfsync always, as the tests run it) on a free
127.0.0.1 port, and with --cluster also a 3-master, 3-replica Redis Cluster; stops them by pid at
the end. Every case runs 16 concurrent loops for a fixed time, in rounds (each case keeps its
best). The baselines are a plain redis-py asyncio client (same pool size, same timeouts) sending
GET, SET and one non-transactional pipeline of MSET per 100 items. On the cluster the backend also
waits for a replica (WAIT 1) after each batch of writes; the "raw SET + WAIT 1" line is that same
pair of commands on plain redis-py, so the cost of waiting for the replica reads off apart from
the backend's own overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from bench.concurrency import run_concurrently
from bench.report import Figure, print_table, save, with_ratio
from proxy.backends.redis import RedisBackend
from proxy.config import BackendSpec
from tests.support.servers.redis import RedisNode, RedisServer, free_port, start_cluster

WORKERS = 16
KEYS = 10_000
BULK = 100
DOC = b'{"name": "someone", "visits": 12, "tags": ["a", "b"]}'


def key(i: int) -> str:
    return f"user:{i % KEYS:05}"


def raw_client(spec: BackendSpec) -> Redis | RedisCluster:
    options = spec.options
    common: dict[str, Any] = {"decode_responses": False, "socket_timeout": options["call_timeout"],
                              "socket_connect_timeout": options["connect_timeout"]}
    if options["cluster"]:
        return RedisCluster.from_url(options["url"], max_connections=options["pool_size"] + 4, **common)
    return Redis.from_url(options["url"], max_connections=options["pool_size"], **common)


async def measure(spec: BackendSpec, seconds: float, rounds: int, label: str) -> list[Figure]:
    prefix = str(spec.options["key_prefix"]).encode()
    backend = await RedisBackend.open(spec)
    raw = raw_client(spec)
    # Cluster connections per node are capped, as the backend caps its calls: the same cap here.
    slots = asyncio.Semaphore(int(spec.options["pool_size"]))
    try:
        await backend.set_many([(key(i), DOC) for i in range(KEYS)])
        # One call first: concurrent first calls on a fresh redis-py cluster client break each
        # other's connections (the backend discovers the cluster behind a lock for the same reason).
        await raw.get(b"warm-up")

        async def raw_get(i: int) -> None:
            async with slots:
                assert await raw.get(prefix + key(i).encode()) is not None

        async def raw_set(i: int) -> None:
            async with slots:
                await raw.set(prefix + key(i).encode(), DOC)

        async def raw_set_wait(i: int) -> None:
            assert isinstance(raw, RedisCluster)
            stored = prefix + key(i).encode()
            async with slots:
                pipe = raw.pipeline()
                pipe.execute_command("SET", stored, DOC)
                pipe.execute_command("WAIT", 1, 1000, target_nodes=raw.get_node_from_key(stored))  # type: ignore[arg-type]
                await pipe.execute()

        async def raw_set_many(i: int) -> None:
            items = [(prefix + key(i + j).encode(), DOC) for j in range(BULK)]
            async with slots:
                if isinstance(raw, RedisCluster):
                    await raw.mset_nonatomic(dict(items))
                else:
                    pipe = raw.pipeline(transaction=False)
                    pipe.mset(dict(items))
                    await pipe.execute()

        async def get(i: int) -> None:
            assert await backend.get(key(i)) is not None

        async def put(i: int) -> None:
            await backend.set(key(i), DOC)

        async def put_many(i: int) -> None:
            await backend.set_many([(key(i + j), DOC) for j in range(BULK)])

        pairs: list[tuple[str, str, Callable[[int], Awaitable[None]], Callable[[int], Awaitable[None]], str]] = [
            ("GET", "get", raw_get, get, "gets/s"),
            ("SET", "set", raw_set, put, "sets/s"),
            (f"MSET x{BULK}", f"set_many x{BULK}", raw_set_many, put_many, "calls/s"),
        ]
        # Each case's best round: other work on a shared machine only ever takes from a case.
        best: dict[str, float] = {}
        for _ in range(rounds):
            for raw_name, name, raw_op, op, _unit in pairs:
                for case, measured in ((f"raw redis-py {raw_name}", raw_op), (f"backend {name}", op)):
                    best[case] = max(best.get(case, 0.0), (await run_concurrently(measured, WORKERS, seconds)).rate)
            if isinstance(raw, RedisCluster):
                case = "raw redis-py SET + WAIT 1"
                best[case] = max(best.get(case, 0.0), (await run_concurrently(raw_set_wait, WORKERS, seconds)).rate)
        figures: list[Figure] = []
        for raw_name, name, _raw_op, _op, unit in pairs:
            baseline = Figure(f"{label}: raw redis-py {raw_name}", best[f"raw redis-py {raw_name}"], unit)
            figures += [baseline, with_ratio(Figure(f"{label}: backend {name}", best[f"backend {name}"], unit),
                                             baseline)]
        if isinstance(raw, RedisCluster):
            figures.append(with_ratio(Figure(f"{label}: raw redis-py SET + WAIT 1", best["raw redis-py SET + WAIT 1"],
                                             "sets/s"), figures[2]))
        return figures
    finally:
        await backend.close()
        await raw.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per case")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case; each case keeps its best")
    parser.add_argument("--cluster", action="store_true", help="also measure on a 3+3 Redis Cluster")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--dir", type=Path, help="folder for the servers' data (default: system temp)")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is missing: install the Debian package redis-server")
    folder = Path(tempfile.mkdtemp(prefix="turnout-bench-redis-", dir=args.dir))
    node = RedisNode(free_port(), folder / "standalone")
    cluster = None
    try:
        node.start()
        figures = await measure(RedisServer(node).spec(), args.seconds, args.rounds, "redis")
        if args.cluster:
            cluster = start_cluster(folder / "cluster")
            figures += await measure(cluster.spec(), args.seconds, args.rounds, "cluster")
    finally:
        node.stop()
        if cluster is not None:
            for member in cluster.nodes:
                member.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print_table(f"redis store, {KEYS} keys, {WORKERS} concurrent loops, appendfsync always", figures)
    save(args.json, "redis_store", figures)


if __name__ == "__main__":
    asyncio.run(main())
