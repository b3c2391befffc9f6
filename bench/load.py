"""Load generators for the KeyValue benchmark, each running outside the server's process.

Two tools behind one call, `generate(LoadSpec) -> LoadResult`:

- h2load (Debian package nghttp2-client): C, one native thread, sends the same framed gRPC request
  over HTTP/2 as fast as the server answers (or at a fixed rate). It needs a fraction of a core to
  saturate a Python server, which matters on a 2-core machine.
- a multi-process Python grpc.aio client: the fallback when h2load is absent, and the tool that can
  spread calls over many keys. It costs about as much CPU as the server it loads.

Latencies are taken per request: from h2load's --log-file, from the client's own clock otherwise.
Both warm up first and then measure for a fixed duration, and both stop by themselves.

    .venv/bin/python bench/load.py worker ...   (internal: one Python client process, JSON on stdout)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

H2LOAD = "h2load"
SERVICE_PATH = "/turnout.kv.v1.KeyValue"
#: The document every Set writes: small, like most of what services store.
SET_VALUE = b'{"name": "someone", "visits": 12, "tags": ["a", "b"]}'
KEY_FORMAT = "bench:{:05}"
#: Extra time a load run may take beyond warm-up + duration before it is killed.
OVERRUN_S = 30.0


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What load to put on one server: which call, how hard, for how long."""

    target: str  # host:port, 127.0.0.1 only
    method: str  # "Get" or "Set"
    duration_s: float
    warmup_s: float
    connections: int = 4
    streams: int = 16  # concurrent calls per connection
    rate: float | None = None  # calls per second in all; None: as fast as the server answers
    keys: int = 1000  # the Python client spreads calls over this many keys; h2load uses one
    processes: int = 2  # Python client processes


@dataclass(frozen=True, slots=True)
class LoadResult:
    tool: str
    requests: int  # completed in the measured window
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float  # CPU the load generator itself used (user + system)


def h2load_available() -> bool:
    return shutil.which(H2LOAD) is not None


def request_bytes(method: str, key: str) -> bytes:
    """The serialized request message a method takes, for the key given."""
    if method == "Get":
        return kv_pb2.GetRequest(key=key).SerializeToString()
    if method == "Set":
        return kv_pb2.SetRequest(key=key, value=SET_VALUE).SerializeToString()
    raise ValueError(f"no load defined for method {method!r}")


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed (0), then the length as 4 big-endian bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def preload(target: str, keys: int) -> None:
    """Give every key the Get load reads a value, so Get measures a hit, and check the server answers."""
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = kv_pb2_grpc.KeyValueStub(channel)
        for i in range(keys):
            stub.Set(kv_pb2.SetRequest(key=KEY_FORMAT.format(i), value=SET_VALUE), timeout=10)
        answer = stub.Get(kv_pb2.GetRequest(key=KEY_FORMAT.format(0)), timeout=10)
        if not answer.found:
            raise RuntimeError(f"{target}: a key just set is not found; the benchmark would measure misses")


def generate(spec: LoadSpec, tool: str) -> LoadResult:
    if tool == "h2load":
        return _run_h2load(spec)
    if tool == "python":
        return _run_python(spec)
    raise ValueError(f"unknown load tool {tool!r}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- h2load ---------------------------------------------------------------------------------------


def h2load_command(spec: LoadSpec, body: Path, log: Path | None = None) -> list[str]:
    """The h2load command that posts body (one framed request) to spec's method as spec says, logging
    each measured request to log when given. Durations go in milliseconds: h2load refuses a fraction
    of a second (1.5) but takes 1500ms."""
    command = [
        H2LOAD,
        f"--duration={round(spec.duration_s * 1000)}ms",
        f"--warm-up-time={round(spec.warmup_s * 1000)}ms",
        f"--clients={spec.connections}",
        f"--max-concurrent-streams={spec.streams}",
        "--threads=1",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"--data={body}",
        *([f"--log-file={log}"] if log is not None else []),
    ]
    if spec.rate is not None:
        command.append(f"--rps={max(spec.rate / spec.connections, 0.1):g}")
    command.append(f"http://{spec.target}{SERVICE_PATH}/{spec.method}")
    return command


def _run_h2load(spec: LoadSpec) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as folder:
        body = Path(folder) / "request.bin"
        body.write_bytes(grpc_frame(request_bytes(spec.method, KEY_FORMAT.format(0))))
        log = Path(folder) / "requests.tsv"
        command = h2load_command(spec, body, log)
        cpu_before = _children_cpu()
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=spec.warmup_s + spec.duration_s + OVERRUN_S, check=False
        )
        cpu = _children_cpu() - cpu_before
        if finished.returncode != 0:
            raise RuntimeError(f"h2load failed ({finished.returncode}):\n{finished.stdout}\n{finished.stderr}")
        return _h2load_result(finished.stdout, log.read_text(), spec, cpu)


def _h2load_result(summary: str, log: str, spec: LoadSpec, cpu: float) -> LoadResult:
    # The log holds the measured window only (h2load does not log warm-up requests).
    latencies: list[float] = []
    errors = 0
    for line in log.splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        if fields[1] != "200":
            errors += 1
        latencies.append(int(fields[2]) / 1000.0)
    counts = h2load_counts(summary)
    failed = counts.get("failed", 0) + counts.get("errored", 0)
    latencies.sort()
    return LoadResult(
        tool="h2load",
        requests=len(latencies),
        errors=errors + failed,
        seconds=spec.duration_s,
        rps=len(latencies) / spec.duration_s,
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        client_cpu_s=cpu,
    )


def h2load_counts(summary: str) -> dict[str, int]:
    """The counts of h2load's `requests: N total, N started, N done, N succeeded, N failed, ...` line
    by name ({"total": N, ...}); empty when the output has no such line."""
    counts: dict[str, int] = {}
    for line in summary.splitlines():
        if line.startswith("requests:"):
            for part in line.removeprefix("requests:").split(","):
                number, _, name = part.strip().partition(" ")
                if number.isdigit():
                    counts.setdefault(name, int(number))
    return counts


# -- the Python client ----------------------------------------------------------------------------


def _run_python(spec: LoadSpec) -> LoadResult:
    processes = max(1, spec.processes)
    # One common start, a little ahead, so every process's measured window is the same wall-clock span.
    start_at = time.time() + 1.0
    concurrency = max(1, spec.connections * spec.streams // processes)
    rate = None if spec.rate is None else spec.rate / processes
    cpu_before = _children_cpu()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "worker",
                f"--target={spec.target}",
                f"--method={spec.method}",
                f"--concurrency={concurrency}",
                f"--start-at={start_at}",
                f"--warmup={spec.warmup_s}",
                f"--duration={spec.duration_s}",
                f"--keys={spec.keys}",
                f"--offset={n}",
                *([f"--rate={rate}"] if rate is not None else []),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    reports: list[dict[str, Any]] = []
    try:
        for worker in workers:
            out, _ = worker.communicate(timeout=1.0 + spec.warmup_s + spec.duration_s + OVERRUN_S)
            if worker.returncode != 0:
                raise RuntimeError(f"a load worker failed with exit code {worker.returncode}")
            reports.append(json.loads(out))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    cpu = _children_cpu() - cpu_before
    latencies = sorted(ms for report in reports for ms in report["latencies_ms"])
    return LoadResult(
        tool=f"python x{processes}",
        requests=len(latencies),
        errors=sum(int(report["errors"]) for report in reports),
        seconds=spec.duration_s,
        rps=len(latencies) / spec.duration_s,
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        client_cpu_s=cpu,
    )


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    measure_from = args.start_at + args.warmup
    stop_at = measure_from + args.duration
    latencies: list[float] = []
    errors = 0
    requests = [
        (kv_pb2.GetRequest(key=KEY_FORMAT.format(i)) if args.method == "Get"
         else kv_pb2.SetRequest(key=KEY_FORMAT.format(i), value=SET_VALUE))
        for i in range(args.keys)
    ]
    async with grpc.aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call = kv_pb2_grpc.KeyValueStub(channel).Get if args.method == "Get" else kv_pb2_grpc.KeyValueStub(channel).Set
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
        # With a rate, each caller has its own slots; latency counts from the slot, not from the send,
        # so a stalled server is not hidden by callers that simply waited (coordinated omission).
        interval = None if args.rate is None else args.concurrency / args.rate

        async def caller(n: int) -> None:
            nonlocal errors
            i = (args.offset * 7919 + n * 104729) % len(requests)
            slot = time.time() + (0.0 if interval is None else interval * n / args.concurrency)
            while True:
                if interval is not None:
                    await asyncio.sleep(max(0.0, slot - time.time()))
                began = slot if interval is not None else time.time()
                if began >= stop_at:
                    return
                try:
                    await call(requests[i], timeout=10)
                    failed = False
                except grpc.aio.AioRpcError:
                    failed = True
                ended = time.time()
                if began >= measure_from:
                    if failed:
                        errors += 1
                    else:
                        latencies.append((ended - began) * 1000.0)
                i = (i + 1) % len(requests)
                if interval is not None:
                    slot += interval

        await asyncio.gather(*(caller(n) for n in range(args.concurrency)))
    return {"latencies_ms": latencies, "errors": errors}


def worker_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="load.py worker")
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", choices=["Get", "Set"], required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--start-at", type=float, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--rate", type=float, default=None)
    args = parser.parse_args(argv)
    import uvloop

    report = uvloop.run(_worker(args))
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
        worker_main(sys.argv[2:])
    else:
        sys.exit(__doc__)
