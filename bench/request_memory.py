"""The memory a real `turnout serve` takes while many connections send it large requests at once,
with `limits.max_concurrent_calls` low (--limit, default 4) against practically unlimited, in one run.

    .venv/bin/python bench/request_memory.py [--connections 32] [--in-flight 2] [--rounds 4]
                                             [--max-value-mib 16] [--limit N] [--json OUT]

Every connection keeps --in-flight Sets going for --rounds rounds each; a call's request is, in turn,
a value just under max_value_bytes (stored), one past it but under the receive limit (read, then
refused with INVALID_ARGUMENT), and one past the receive limit (cut off by gRPC). The server's peak
resident set (VmHWM, reset once the stores hold their values) is printed against its resident set
before the load, and the unlimited run's growth over the limited run's is the ratio. Both runs end
by themselves: the work is a fixed number of calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from turnout.kv.v1 import kv_pb2

from proxy.config import Limits
from proxy.progress import Progress
from proxy.serving.server import receive_limit
from tests.support.proxy_process import ProxyProcess, write_config

MIB = 1024 * 1024
MEMORY_PAIR = ({"type": "memory"}, {"type": "memory"})
SET_METHOD = "/turnout.kv.v1.KeyValue/Set"
#: Practically no limit: more calls than any run here has in flight.
UNLIMITED_CALLS = 1_000_000
#: The limited run's limit: far below the load's calls in flight, so the limit is what holds it.
LIMITED_CALLS = 4
CALL_TIMEOUT_S = 120.0
#: The requests each call slot sends in turn (see Sizes).
KINDS = ("stored", "over_value_limit", "over_receive_limit")


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no {name} for process {pid}")


def resident_bytes(pid: int) -> int:
    """Process pid's resident set now (VmRSS)."""
    return _status_field(pid, "VmRSS")


def peak_resident_bytes(pid: int) -> int:
    """Process pid's highest resident set since it started or since reset_peak (VmHWM)."""
    return _status_field(pid, "VmHWM")


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current resident set (Linux: 5 written to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5\n")


def json_string(size: int, tag: str) -> bytes:
    """A JSON string document of exactly size bytes starting with tag, so a read-back tells rounds apart."""
    head = b'"' + tag.encode() + b"-"
    return head + b"x" * (size - len(head) - 1) + b'"'


def set_request(key: str, value: bytes) -> bytes:
    return kv_pb2.SetRequest(key=key, value=value).SerializeToString()


def _raw(message: bytes) -> bytes:
    return message  # the requests are serialized once, ahead of the calls


@dataclass(frozen=True, slots=True)
class Sizes:
    """The three sizes of request the load sends, for a proxy with max_value_bytes."""

    max_value_bytes: int

    @property
    def stored(self) -> int:
        """A value just under the limit: accepted and stored."""
        return self.max_value_bytes - 1024

    @property
    def over_value_limit(self) -> int:
        """Past max_value_bytes, under the receive limit: read whole, then refused with INVALID_ARGUMENT."""
        return min(self.max_value_bytes + self.max_value_bytes // 4, receive_limit(self.max_value_bytes) - MIB)

    @property
    def over_receive_limit(self) -> int:
        """Past the receive limit: gRPC cuts the call off (RESOURCE_EXHAUSTED)."""
        return receive_limit(self.max_value_bytes) + MIB


@dataclass(slots=True)
class LoadResult:
    """What the calls of one load got back."""

    #: (kind of request, status code name) -> calls; the kinds are KINDS.
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Every (status code name, message) the calls got, for a report.
    details: set[tuple[str, str]] = field(default_factory=set)
    #: key -> the tag of the last value whose Set was acknowledged.
    acknowledged: dict[str, str] = field(default_factory=dict)
    calls: int = 0


class PeakSampler:
    """Samples a process's resident set in a thread while a load runs (VmHWM catches what it misses)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.highest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.highest = max(self.highest, resident_bytes(self.pid))
            except (OSError, LookupError):
                return

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def stored_keys(connections: int, in_flight: int) -> list[str]:
    """One key per call slot: each is written by one slot only, one Set after another, so its last
    acknowledged value is known."""
    return [f"big-{c}-{s}" for c in range(connections) for s in range(in_flight)]


async def run_load(target: str, connections: int, in_flight: int, rounds: int, sizes: Sizes,
                   advance: Callable[[], None] = lambda: None) -> LoadResult:
    """connections separate HTTP/2 connections, each with in_flight Sets going at once, rounds calls each."""
    result = LoadResult()
    over_value = set_request("refused", json_string(sizes.over_value_limit, "over"))
    over_receive = set_request("refused", json_string(sizes.over_receive_limit, "huge"))
    # A local subchannel pool per channel: without it, channels to one target share one connection.
    options = [("grpc.max_send_message_length", -1), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in channels))

        async def slot(channel: grpc.aio.Channel, key: str) -> None:
            call = channel.unary_unary(SET_METHOD, request_serializer=_raw, response_deserializer=_raw)
            for n in range(rounds):
                kind = KINDS[n % len(KINDS)]
                tag = f"r{n}"
                request = (set_request(key, json_string(sizes.stored, tag)) if kind == "stored"
                           else over_value if kind == "over_value_limit" else over_receive)
                try:
                    await call(request, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as failure:
                    name = failure.code().name
                    result.details.add((name, failure.details() or ""))
                else:
                    name = "OK"
                    if kind == "stored":
                        result.acknowledged[key] = tag
                result.codes[kind, name] += 1
                result.calls += 1
                advance()

        keys = iter(stored_keys(connections, in_flight))
        await asyncio.gather(*(slot(channel, next(keys)) for channel in channels for _ in range(in_flight)))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return result


async def fill_keys(target: str, keys: list[str], size: int) -> None:
    """Every key holding a value of size, one Set at a time: the stores then hold what the load keeps."""
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as channel:
        call = channel.unary_unary(SET_METHOD, request_serializer=_raw, response_deserializer=_raw)
        for key in keys:
            await call(set_request(key, json_string(size, "fill")), timeout=CALL_TIMEOUT_S)


@dataclass(frozen=True, slots=True)
class Measured:
    limit: int
    base: int
    peak: int
    sampled_peak: int
    result: LoadResult
    seconds: float

    @property
    def growth(self) -> int:
        return max(self.peak - self.base, 0)


def proxy_config(folder: Path, max_value_bytes: int, limit: int) -> Path:
    return write_config(folder, *MEMORY_PAIR, max_value_bytes=max_value_bytes,
                        limits={"max_concurrent_calls": limit})


@contextmanager
def running_proxy(folder: Path, max_value_bytes: int, limit: int) -> Iterator[ProxyProcess]:
    with ProxyProcess(proxy_config(folder, max_value_bytes, limit)) as proxy:
        yield proxy


def measure(folder: Path, connections: int, in_flight: int, rounds: int, max_value_bytes: int,
            limit: int) -> Measured:
    """One fresh proxy under the load: its resident set once its stores are filled, then its peak."""
    sizes = Sizes(max_value_bytes)
    with running_proxy(folder, max_value_bytes, limit) as proxy:
        assert proxy.process is not None
        pid = proxy.process.pid
        asyncio.run(fill_keys(proxy.target, stored_keys(connections, in_flight), sizes.stored))
        base = resident_bytes(pid)
        reset_peak(pid)
        progress = Progress(f"max_concurrent_calls {limit}", connections * in_flight * rounds)
        started = time.monotonic()
        with PeakSampler(pid) as sampler:
            result = asyncio.run(run_load(proxy.target, connections, in_flight, rounds, sizes, progress.advance))
        progress.close()
        return Measured(limit, base, peak_resident_bytes(pid), sampler.highest, result,
                        time.monotonic() - started)


def figures(run: Measured, max_value_bytes: int) -> dict[str, Any]:
    return {
        "max_concurrent_calls": run.limit,
        "receive_limit_mib": round(receive_limit(max_value_bytes) / MIB, 2),
        "base_rss_mib": round(run.base / MIB, 1),
        "peak_rss_mib": round(run.peak / MIB, 1),
        "sampled_peak_rss_mib": round(run.sampled_peak / MIB, 1),
        "growth_mib": round(run.growth / MIB, 1),
        "growth_per_limit_receive_limits": round(run.growth / (run.limit * receive_limit(max_value_bytes)), 3)
        if run.limit < UNLIMITED_CALLS else None,
        "calls": run.result.calls,
        "codes": {f"{kind} {code}": count for (kind, code), count in sorted(run.result.codes.items())},
        "details": sorted(f"{code}: {details}" for code, details in run.result.details),
        "seconds": round(run.seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=2, help="Sets each connection keeps going at once")
    parser.add_argument("--rounds", type=int, default=4, help="calls each of those makes, one after another")
    parser.add_argument("--max-value-mib", type=int, default=16)
    parser.add_argument("--limit", type=int, default=LIMITED_CALLS,
                        help=f"limits.max_concurrent_calls of the limited run (the config's default is "
                             f"{Limits().max_concurrent_calls}, above what this load keeps in flight)")
    parser.add_argument("--only-limited", action="store_true", help="skip the unlimited run")
    parser.add_argument("--json", nargs="?", const="-", help="print the figures as JSON (or write them to a file)")
    args = parser.parse_args(argv)
    max_value_bytes = args.max_value_mib * MIB
    runs: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="request-memory-") as home:
        limits = [args.limit] if args.only_limited else [args.limit, UNLIMITED_CALLS]
        for limit in limits:
            runs.append(measure(Path(home) / str(limit), args.connections, args.in_flight, args.rounds,
                                max_value_bytes, limit))
    doc: dict[str, Any] = {
        "connections": args.connections, "in_flight": args.in_flight, "rounds": args.rounds,
        "max_value_bytes": max_value_bytes, "runs": [figures(run, max_value_bytes) for run in runs],
    }
    if len(runs) == 2:
        doc["growth_ratio_unlimited_over_limited"] = round(runs[1].growth / max(runs[0].growth, 1), 2)
    if args.json:
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.json != "-":
        for run in doc["runs"]:
            print(f"max_concurrent_calls {run['max_concurrent_calls']:>9}: base {run['base_rss_mib']} MiB, "
                  f"peak {run['peak_rss_mib']} MiB (+{run['growth_mib']} MiB), {run['calls']} calls "
                  f"{run['codes']} in {run['seconds']} s")
        if "growth_ratio_unlimited_over_limited" in doc:
            print(f"peak growth, unlimited / limited: {doc['growth_ratio_unlimited_over_limited']}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
