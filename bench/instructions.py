"""Instructions per call of the proxy against the floor, counted by valgrind's callgrind: a figure this
machine's drifting speed does not move (bench/run.py's requests/s move by up to 20 % between 5 s runs).

    .venv/bin/python bench/instructions.py [--calls 2000] [--ops Set,Get] [--streams 8] [--json OUT]

Each server (bench/floor_server.py, and `turnout serve` on memory stores, routed old) runs under
callgrind; h2load sends --calls calls of one op on 4 connections x --streams in flight after a warm-up, with
the counters zeroed between, and the dump taken after them is divided by the calls. Counted are the
server's user-space instructions in all its threads (grpc's core included; the kernel's work is not,
and it is alike for both: the same syscalls per call). Work on timers while the calls run (the
proxy's health probes, flag checks) is counted too, and stretched, as everything runs ~50x slower
under callgrind: each server's idle instructions, counted over IDLE_S seconds first, are taken off in
proportion to the seconds the calls took. The event loop's thread is counted apart: the handlers and
grpc's Python layer run there, so it is the busiest and the one whose ratio the target is read on.
Needs Debian's `valgrind` and `h2load` (nghttp2-client).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cases import server_named
from bench.load import KEY_FORMAT, SERVICE_PATH, grpc_frame, preload, request_bytes
from bench.report import Figure, print_table, save
from bench.servers import REPO, SERVING, write_proxy_config

WARMUP_CALLS = 600
IDLE_S = 8.0
START_TIMEOUT_S = 300.0  # the proxy's imports take about half a minute under callgrind


@dataclass(frozen=True, slots=True)
class Instructions:
    """What one callgrind dump counted: in every thread, and in the main thread (the event loop's)."""

    total: int
    main: int


@dataclass(frozen=True, slots=True)
class Count:
    per_call: float  # instructions per call in all threads, idle work taken off
    main_per_call: float  # the same in the event loop's thread, where the handlers run
    idle_per_call: float  # what was taken off the total
    load_s: float  # how long the calls took under callgrind


def totals(dump: Path) -> int:
    """The instructions a callgrind dump counted."""
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{dump}: no totals line")


def h2load(target: str, op: str, body: Path, calls: int, streams: int) -> None:
    done = subprocess.run(
        ["h2load", f"--requests={calls}", "--clients=4", f"--max-concurrent-streams={streams}", "--threads=1",
         "--header=content-type: application/grpc", "--header=te: trailers", f"--data={body}",
         f"http://{target}{SERVICE_PATH}/{op}"], capture_output=True, text=True, timeout=1800, check=False)
    if f"{calls} succeeded" not in done.stdout:
        raise RuntimeError(f"h2load did not complete {calls} {op} calls:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def count(command: list[str], op: str, calls: int, streams: int, folder: Path) -> Count:
    """Start command under callgrind, load it, and count instructions per call."""
    out = folder / "callgrind.out"
    body = folder / f"{op}.bin"
    body.write_bytes(grpc_frame(request_bytes(op, KEY_FORMAT.format(0))))
    # One dump per thread (callgrind.out.PID.N-TT, TT 01 the main thread), to count the event loop's alone.
    server = subprocess.Popen(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                               f"--callgrind-out-file={out}.%p", "-q", *command],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        target = _serving(server)
        if op == "Get":
            preload(target, 1)  # Get measures a hit, as bench/run.py does
        h2load(target, op, body, WARMUP_CALLS, streams)
        idle = _dumped(server.pid, folder, "idle", lambda: time.sleep(IDLE_S))
        started = time.monotonic()
        loaded = _dumped(server.pid, folder, "load", lambda: h2load(target, op, body, calls, streams))
        load_s = time.monotonic() - started
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    share = load_s / IDLE_S  # the idle work of as many seconds as the calls took
    return Count((loaded.total - idle.total * share) / calls, (loaded.main - idle.main * share) / calls,
                 idle.total * share / calls, load_s)


def _serving(server: subprocess.Popen[str]) -> str:
    assert server.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    for line in server.stdout:
        match = SERVING.search(line)
        if match:
            return match.group(1)
        if time.monotonic() > deadline:
            break
    raise RuntimeError("the server did not start under callgrind")


def _dumped(pid: int, folder: Path, name: str, work: Callable[[], object]) -> Instructions:
    """Zero the counters, do the work, dump, and return what the dump counted."""
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
    work()
    before = set(folder.glob("callgrind.out.*"))
    subprocess.run(["callgrind_control", "-d", name, str(pid)], capture_output=True, check=True)
    time.sleep(1.0)  # every thread's file written whole
    new = set(folder.glob("callgrind.out.*")) - before
    if not new:
        raise RuntimeError(f"callgrind wrote no dump for {name}")
    main = [path for path in new if path.name.endswith("-01")]
    return Instructions(sum(totals(path) for path in new), totals(main[0]) if main else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--ops", default="Set,Get")
    parser.add_argument("--streams", type=int, default=8, help="calls in flight per connection (default 8)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "h2load"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/instructions.py needs {tool} (Debian: valgrind, nghttp2-client)")
    python = sys.executable
    figures = []
    with tempfile.TemporaryDirectory(prefix="turnout-instructions-") as scratch:
        config = write_proxy_config(Path(scratch) / "proxy", server_named("proxy-memory"))
        commands = {
            "floor": [python, str(REPO / "bench" / "floor_server.py")],
            "proxy": [python, "-m", "proxy.cli", "serve", "--config", str(config), "--log-level", "WARNING"],
        }
        for op in [name.strip() for name in args.ops.split(",") if name.strip()]:
            counted = {}
            for name, command in commands.items():
                folder = Path(scratch) / f"{name}-{op}"
                folder.mkdir()
                print(f"count {name} {op} under callgrind ...", file=sys.stderr, flush=True)
                counted[name] = count(command, op, args.calls, args.streams, folder)
                print(f"  {counted[name].per_call:,.0f} instructions per call, {counted[name].main_per_call:,.0f} "
                      f"in the event loop's thread ({counted[name].idle_per_call:,.0f} of idle work taken off; "
                      f"calls took {counted[name].load_s:.1f} s)", file=sys.stderr)
            floor, proxy = counted["floor"], counted["proxy"]
            # A ratio is the floor's count over the proxy's: the share of the floor's speed the proxy
            # keeps if time follows instructions. The event loop's thread is where the server is busiest
            # (grpc's own threads run beside it), so its ratio is the one read against the target.
            figures += [
                Figure(f"floor {op}, all threads", floor.per_call, "instr/call"),
                Figure(f"proxy {op}, all threads", proxy.per_call, "instr/call", f"floor {op}, all threads",
                       floor.per_call / proxy.per_call),
                Figure(f"floor {op}, event loop", floor.main_per_call, "instr/call"),
                Figure(f"proxy {op}, event loop", proxy.main_per_call, "instr/call", f"floor {op}, event loop",
                       floor.main_per_call / proxy.main_per_call, 0.90),
            ]
    print_table(f"instructions per call under callgrind, {args.calls} calls, 4x{args.streams} in flight", figures)
    save(args.json, "instructions", figures)


if __name__ == "__main__":
    main()
