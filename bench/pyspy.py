"""Sampling a server under load with py-spy, and reading its collapsed stacks as top frames.

py-spy (`pip install py-spy`) attaches to the running process from outside, so the proxy's code
is profiled as it is; --nonblocking keeps it from pausing the server to take a sample.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

RATE_HZ = 250


def py_spy() -> str | None:
    """The py-spy executable: beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_recording(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    executable = py_spy()
    if executable is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [executable, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
               "--rate", str(RATE_HZ), "--format", "raw", "--nonblocking", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass(frozen=True, slots=True)
class FrameShare:
    frame: str
    share: float  # of all samples


def top_frames(collapsed: str, count: int = 15) -> tuple[list[FrameShare], list[FrameShare]]:
    """(self, inclusive) top frames of py-spy's raw output: `frame;frame;...;leaf samples` per line."""
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if total == 0:
        return [], []
    return (
        [FrameShare(frame, n / total) for frame, n in leaf.most_common(count)],
        [FrameShare(frame, n / total) for frame, n in inclusive.most_common(count)],
    )


def by_file(collapsed: str, count: int = 15) -> list[FrameShare]:
    """Inclusive share of each source file, over the samples of the event-loop (main) thread only."""
    files: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit() or "Thread.run (threading.py" in stack:
            continue
        total += int(samples)
        for name in {frame.rpartition("(")[2].partition(":")[0] for frame in stack.split(";") if "(" in frame}:
            files[name] += int(samples)
    return [FrameShare(name, n / total) for name, n in files.most_common(count)] if total else []


def print_top(title: str, collapsed: str, count: int = 15) -> None:
    own, inclusive = top_frames(collapsed, count)
    print(f"\n{title}: source files, share of the event-loop thread's samples (native code has no frame)")
    for share in by_file(collapsed, count):
        print(f"  {share.share:6.1%}  {share.frame}")
    print(f"\n{title}: top frames by own samples")
    for share in own:
        print(f"  {share.share:6.1%}  {share.frame}")
    print(f"{title}: top frames including callees")
    for share in inclusive:
        print(f"  {share.share:6.1%}  {share.frame}")
