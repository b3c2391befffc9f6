"""Server CPU per gRPC call, shadow mode against route old, at one fixed rate (h2load, memory stores).

    .venv/bin/python bench/profile_shadow.py [--op Set] [--rate 5000] [--duration 8] [--rounds 3]
                                             [--pyspy DIR] [--perf DIR] [--servers a,b] [--json OUT]
    .venv/bin/python bench/profile_shadow.py --servers floor,proxy-memory --op Get   # the proxy's own cost

Throughput on a shared 2-core machine moves by several points between runs; CPU time per call at a
rate both servers sustain moves far less, and it is what the throughput gap comes from. Each round
starts each server (by default bench/cases.py's proxy-memory and proxy-memory-shadow; --servers
names others, the first being what the rest are read against), loads each in turn at
the same rate with the same framed request bench/run.py sends, and reads utime + stime of the
server process from /proc before and after the measured window: in all, and for the event-loop
thread alone (the rest is grpc's own threads). --pyspy and --perf record each server meanwhile (the
figures of a profiled run then include the profiler's cost).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import pyspy
from bench.cases import server_named
from bench.load import (
    KEY_FORMAT,
    OVERRUN_S,
    LoadSpec,
    grpc_frame,
    h2load_command,
    h2load_counts,
    preload,
    request_bytes,
)
from bench.servers import RunningServer, cpu_seconds

SERVERS = ("proxy-memory", "proxy-memory-shadow")


def cpu_by_thread(pid: int) -> dict[str, float]:
    """CPU seconds so far: 'all' for the process, 'loop' for its main (event-loop) thread."""
    return {"all": cpu_seconds(pid), "loop": cpu_seconds(pid, thread=pid)}


def h2load(target: str, op: str, seconds: float, rate: float, connections: int, streams: int, body: Path) -> int:
    """Load for `seconds` at `rate` calls/s in all (0: flat out); the number of calls that succeeded."""
    spec = LoadSpec(target, op, duration_s=seconds, warmup_s=0, connections=connections,
                    streams=streams, rate=rate or None)
    out = subprocess.run(h2load_command(spec, body), capture_output=True, text=True, check=True,
                         timeout=seconds + OVERRUN_S).stdout
    succeeded = h2load_counts(out).get("succeeded")
    if succeeded is None:
        raise RuntimeError(f"no request count in h2load's output:\n{out}")
    return succeeded


@dataclass(frozen=True, slots=True)
class Sample:
    server: str
    calls: int
    us_all: float
    us_loop: float


def measure(running: RunningServer, args: argparse.Namespace, body: Path, profile: Path | None) -> Sample:
    target = running.target
    h2load(target, args.op, args.warmup, args.rate, args.connections, args.streams, body)
    recorders: list[subprocess.Popen[bytes]] = []
    if args.pyspy and profile is not None:
        executable = pyspy.py_spy()
        if executable is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        recorders.append(subprocess.Popen(
            [executable, "record", "--pid", str(running.pid), "--duration", str(max(1, round(args.duration))),
             "--rate", str(args.pyspy_rate), "--format", "raw", "--threads",
             # --native pauses the server at every sample (py-spy cannot read native stacks without),
             # which inflates whatever the pause lands on (syscalls); without it py-spy never pauses.
             *(["--native"] if args.native else ["--nonblocking"]),
             "--output", str(profile.with_suffix(".pyspy.txt"))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if args.perf and profile is not None:
        recorders.append(subprocess.Popen(
            ["/usr/bin/perf", "record", "-F", "499", "-g", "-p", str(running.pid), "-o",
             str(profile.with_suffix(".perf.data")), "--", "sleep", str(args.duration)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    before = cpu_by_thread(running.pid)
    calls = h2load(target, args.op, args.duration, args.rate, args.connections, args.streams, body)
    after = cpu_by_thread(running.pid)
    for recorder in recorders:
        recorder.wait()
    return Sample(running.server.name, calls, 1e6 * (after["all"] - before["all"]) / calls,
                  1e6 * (after["loop"] - before["loop"]) / calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--op", default="Set", choices=("Get", "Set"))
    parser.add_argument("--rate", type=float, default=5000.0,
                        help="calls/s in all (both servers must sustain it); 0: flat out")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--pyspy", type=Path, help="record each server with py-spy into this folder")
    parser.add_argument("--native", action="store_true", help="py-spy --native (pauses the server per sample)")
    parser.add_argument("--pyspy-rate", type=int, default=pyspy.RATE_HZ, help="py-spy samples per second")
    parser.add_argument("--perf", type=Path, help="record each server with perf -g into this folder")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="servers of bench/cases.py to measure in turn, each round (e.g. floor,proxy-memory)")
    parser.add_argument("--json", type=Path, help="also write every sample and each server's best here")
    args = parser.parse_args()
    servers: list[str] = [name for name in args.servers.split(",") if name]
    profile_dir: Path | None = args.pyspy or args.perf
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as scratch:
        body = Path(scratch) / "request.bin"
        body.write_bytes(grpc_frame(request_bytes(args.op, KEY_FORMAT.format(0))))
        for round_no in range(args.rounds):
            for name in servers:
                with RunningServer(server_named(name), Path(scratch) / f"{round_no}-{name}") as running:
                    preload(running.target, 1)
                    profile = None if profile_dir is None else profile_dir / f"{name}-{args.op}-{round_no}"
                    sample = measure(running, args, body, profile)
                samples.append(sample)
                print(f"round {round_no}: {name:22} {args.op} {sample.calls / args.duration:8.0f} calls/s  "
                      f"{sample.us_all:6.1f} us CPU/call ({sample.us_loop:6.1f} us on the event-loop thread)",
                      flush=True)
    best: dict[str, dict[str, float]] = {}
    for name in servers:
        mine = [s for s in samples if s.server == name]
        best[name] = {"us_all": min(s.us_all for s in mine), "us_loop": min(s.us_loop for s in mine)}
        print(f"{name:22} best {best[name]['us_all']:6.1f} us/call, loop thread "
              f"{best[name]['us_loop']:6.1f}; all: {', '.join(f'{s.us_all:.1f}' for s in mine)}")
    first = servers[0]
    for name in servers[1:]:
        # Each round's pair, side by side: a ratio of CPU per call moves far less than throughput.
        pairs = [b.us_all / a.us_all for a, b in zip((s for s in samples if s.server == first),
                                                      (s for s in samples if s.server == name), strict=True)]
        print(f"{name} / {first}: CPU per call x{best[name]['us_all'] / best[first]['us_all']:.2f} (bests), "
              f"per round {', '.join(f'{r:.2f}' for r in pairs)}")
    if args.json is not None:
        args.json.write_text(json.dumps({"op": args.op, "rate": args.rate, "samples": [asdict(s) for s in samples],
                                         "best": best}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
