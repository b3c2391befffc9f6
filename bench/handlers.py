"""CPU per call of the proxy's own Python path against the floor's handler, in one process (no gRPC).

    .venv/bin/python bench/handlers.py [--calls 20000] [--rounds 7] [--json bench/results/handlers.json]
    .venv/bin/python bench/handlers.py --tree /tmp/before   # the same path in another checkout

What the server runs per Set or Get beside what any gRPC server does: the refusal
wrapper, the raw-bytes handler (decoding, key and value checks), the dispatcher (route, key turn,
metrics), the backend call, on memory stores, one hot key, tracing off. The floor is
bench/floor_server.py's handler with protobuf decoding. `--tree` imports the proxy from another
checkout (a `git worktree add /tmp/before <commit>`), so a change is measured against its parent
on the same machine in the same way. Each figure is the lowest CPU time per call over --rounds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import uvloop

REPO = Path(__file__).resolve().parent.parent
VALUE = b'{"name": "someone", "visits": 12, "tags": ["a", "b"]}'
KEY = "bench:00000"


class Context:
    """The little of grpc's servicer context the handlers ask for on a call that succeeds."""

    def invocation_metadata(self) -> tuple[()]:
        return ()


async def measure(calls: int, rounds: int) -> dict[str, float]:
    import grpc
    from turnout.kv.v1 import kv_pb2

    from bench.floor_server import DictKeyValue
    from proxy.backends.memory import MemoryBackend
    from proxy.backends.sqlite import SqliteBackend
    from proxy.data.discrepancies import DiscrepancyLog
    from proxy.data.dispatcher import Dispatcher
    from proxy.data.keylocks import KeyLocks
    from proxy.replication.local import ReplicationQueue
    from proxy.routing.flags import Flags
    from proxy.routing.router import Route, Router
    from proxy.serving.kvservice import KV_SERVICE, KeyValueService
    from proxy.serving.refusals import InFlight
    from proxy.serving.server import ServiceHandlers, add_key_value
    from proxy.telemetry.metrics import Metrics
    from proxy.telemetry.tracing import Telemetry

    class Routes:
        router = Router(Flags())

    folder = Path(tempfile.mkdtemp())
    old, new = MemoryBackend(), MemoryBackend()
    store = await SqliteBackend.open(folder / "queue.sqlite")
    locks = KeyLocks()
    queue = ReplicationQueue(store, {"old": old, "new": new}, locks)
    queue.start()
    log = DiscrepancyLog(folder)
    log.start()
    telemetry = Telemetry(enabled=False)
    dispatcher = Dispatcher({Route.OLD: old, Route.NEW: new}, Routes(), queue, locks, log, Metrics(), telemetry)
    service = KeyValueService(lambda: dispatcher, 1 << 20, telemetry)
    # The handlers as `turnout serve` registers them: wrapped, and with their reply encoders if any.
    table = ServiceHandlers()
    add_key_value(service, cast(grpc.aio.Server, table), InFlight(1 << 30))
    registered = table.services[KV_SERVICE]
    proxy_set, set_reply = registered["Set"].unary_unary, registered["Set"].response_serializer
    proxy_get, get_reply = registered["Get"].unary_unary, registered["Get"].response_serializer
    assert proxy_set is not None
    assert proxy_get is not None
    floor = DictKeyValue()
    set_raw = kv_pb2.SetRequest(key=KEY, value=VALUE).SerializeToString()
    get_raw = kv_pb2.GetRequest(key=KEY).SerializeToString()
    context: Any = Context()  # stands in for grpc's ServicerContext

    async def proxy_sets() -> None:
        for _ in range(calls):
            reply = await proxy_set(set_raw, context)
            if set_reply is not None:  # what grpc does with the handler's answer
                set_reply(reply)

    async def proxy_gets() -> None:
        for _ in range(calls):
            reply = await proxy_get(get_raw, context)
            if get_reply is not None:
                get_reply(reply)

    async def floor_sets() -> None:
        for _ in range(calls):
            reply = await floor.Set(kv_pb2.SetRequest.FromString(set_raw), context)
            kv_pb2.SetResponse.SerializeToString(reply)

    async def floor_gets() -> None:
        for _ in range(calls):
            reply = await floor.Get(kv_pb2.GetRequest.FromString(get_raw), context)
            kv_pb2.GetResponse.SerializeToString(reply)

    cases = {"floor Set": floor_sets, "proxy Set": proxy_sets, "floor Get": floor_gets, "proxy Get": proxy_gets}
    await proxy_sets()  # the key exists for the Gets, and every path is warm
    await floor_sets()
    best = dict.fromkeys(cases, float("inf"))
    try:
        for _ in range(rounds):  # interleaved, so a noisy moment hits one round of each case
            for name, run in cases.items():
                started = time.process_time()
                await run()
                best[name] = min(best[name], (time.process_time() - started) / calls * 1e6)
    finally:
        await queue.stop()
        await log.stop()
        await store.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tree", type=Path, default=REPO, help="the checkout whose proxy is measured")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # The measured proxy comes from --tree; the report helpers and the floor from this checkout.
    sys.path[:0] = [str(args.tree), str(REPO)]
    from bench.report import Figure, print_table, save

    best = uvloop.run(measure(args.calls, args.rounds))
    figures = []
    for op in ("Set", "Get"):
        floor = Figure(f"floor {op}", best[f"floor {op}"], "us/call")
        proxy = Figure(f"proxy {op}", best[f"proxy {op}"], "us/call", floor.case, best[f"proxy {op}"] / floor.value)
        figures += [floor, proxy]
    print_table(f"CPU per call in one process, {args.tree}", figures)
    for op in ("Set", "Get"):
        print(f"  the proxy adds {best[f'proxy {op}'] - best[f'floor {op}']:.2f} us per {op}")
    save(args.json, "handlers", figures)


if __name__ == "__main__":
    main()
