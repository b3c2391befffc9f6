"""A progress bar for long work, drawn only on a terminal; elsewhere the command prints a summary."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self, label: str, total: int | None, stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced since import
        self._stream = stream
        self._enabled = stream.isatty() if enabled is None else enabled
        self._started = time.monotonic()
        self._last_draw = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self._enabled and (now - self._last_draw > 0.1 or self.done == self.total):
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            bar = "#" * int(fraction * 30)
            eta = (self.total - self.done) / rate if rate else 0.0
            text = (f"\r{self.label} [{bar:<30}] {fraction:6.1%} {self.done}/{self.total} "
                    f"{rate:,.0f}/s eta {eta:,.0f}s ")
        else:
            text = f"\r{self.label} {self.done} {rate:,.0f}/s "
        self._stream.write(text)
        self._stream.flush()

    def close(self) -> None:
        if self._enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()
