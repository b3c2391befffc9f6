"""The `grpc` store's Get and Set rates against a raw KeyValue stub on the same upstream, same run.

    .venv/bin/python bench/upstream_store.py [--seconds 3] [--workers 32] [--rounds 3] [--json FILE]

One upstream `turnout serve` on memory stores is started on 127.0.0.1 and seeded. Each case runs
`--workers` concurrent loops in this process for a fixed time: the baseline calls the generated
stub on a plain grpc.aio channel (no deadline bookkeeping, no retry policy, no write order, no
error mapping), the other calls UpstreamBackend.get / set. The ratio is what the store's own work
costs on top of the wire. Client and upstream share the machine, so read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grpc import aio  # after the path is set, as the other benchmarks do
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from bench.cases import Server
from bench.concurrency import run_concurrently
from bench.report import Figure, print_table, save, with_ratio
from bench.servers import RunningServer
from proxy.backends.options import read_options
from proxy.backends.registry import store_type
from proxy.backends.upstream import UpstreamBackend
from proxy.config import BackendSpec

KEYS = 2_000
DOC = b'{"name": "someone", "visits": 12, "tags": ["a", "b"]}'
UPSTREAM = Server("upstream-memory", "proxy")


def key(i: int) -> str:
    return f"user:{i % KEYS:05}"


async def measure(target: str, seconds: float, workers: int, rounds: int) -> list[Figure]:
    channel = aio.insecure_channel(target)
    stub = kv_pb2_grpc.KeyValueStub(channel)
    entry = store_type("grpc")
    backend = await UpstreamBackend.open(
        BackendSpec(type="grpc", options=read_options(entry.options, {"target": target}, Path.cwd())))
    try:
        await backend.set_many([(key(i), DOC) for i in range(KEYS)])

        async def raw_get(i: int) -> None:
            assert (await stub.Get(kv_pb2.GetRequest(key=key(i)), timeout=5)).found

        async def raw_set(i: int) -> None:
            await stub.Set(kv_pb2.SetRequest(key=key(i), value=DOC), timeout=5)

        async def store_get(i: int) -> None:
            assert await backend.get(key(i)) is not None

        async def store_set(i: int) -> None:
            await backend.set(key(i), DOC)

        await run_concurrently(raw_get, workers, min(seconds, 1.0))  # warm-up: connections, caches
        cases = {"raw stub Get": (raw_get, "gets/s"), "grpc store get": (store_get, "gets/s"),
                 "raw stub Set": (raw_set, "sets/s"), "grpc store set": (store_set, "sets/s")}
        best = dict.fromkeys(cases, 0.0)
        cpu = dict.fromkeys(cases, float("inf"))
        # Interleaved rounds, each case's best kept: other work on a shared machine only ever takes
        # from a case, and a noisy moment then hits one round of each rather than one case.
        for _ in range(rounds):
            for name, (op, _unit) in cases.items():
                # The CPU per call of this process, its gRPC threads included.
                measured = await run_concurrently(op, workers, seconds)
                best[name], cpu[name] = max(best[name], measured.rate), min(cpu[name], measured.cpu_us_per_call)
        figures = {name: Figure(f"{name}, {workers} concurrent", best[name], unit,
                                extra={"client_cpu_us_per_call": cpu[name]}) for name, (_, unit) in cases.items()}
        return [figures["raw stub Get"], with_ratio(figures["grpc store get"], figures["raw stub Get"]),
                figures["raw stub Set"], with_ratio(figures["grpc store set"], figures["raw stub Set"])]
    finally:
        await backend.close()
        await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per case")
    parser.add_argument("--workers", type=int, default=32, help="concurrent callers in this process")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each case's best is kept")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RunningServer(UPSTREAM, Path(tmp)) as upstream:
        figures = asyncio.run(measure(upstream.target, args.seconds, args.workers, args.rounds))
    print_table(f"grpc store on an upstream turnout (memory stores), {KEYS} keys", figures)
    for figure in figures:
        # Less swayed by other work on the machine than the rates: what one call costs this process.
        print(f"  {figure.case}: {figure.extra['client_cpu_us_per_call']:.0f} us of client CPU per call")
    save(args.json, "upstream_store", figures)


if __name__ == "__main__":
    main()
