"""Killing a real writer process mid-stream: tests/support/crash_writer.py prints each write once it is
acknowledged, and is SIGKILLed at a chosen point, so a test can check the store against what it printed."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

from tests.support.paths import ROOT


def acknowledged_before_kill(args: list[str], kill_after: int, watchdog_s: float) -> list[str]:
    """Run crash_writer.py with args, SIGKILL it once it has printed kill_after lines, and return every
    line it printed (those written before the kill landed too)."""
    writer = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "crash_writer.py"), *args],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert writer.stdout is not None
    # Bounds the test if the writer hangs: a killed writer closes its stdout, which ends every read below.
    watchdog = threading.Timer(watchdog_s, writer.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        assert writer.stdout.readline().strip() == "ready"
        for line in writer.stdout:
            lines.append(line.strip())
            if len(lines) >= kill_after:
                break
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        lines.extend(line.strip() for line in writer.stdout)  # acknowledged before the kill landed
    finally:
        watchdog.cancel()
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL, "the writer ended before it was killed"
    return lines
