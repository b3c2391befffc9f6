"""The health window's figures over time: one point every few seconds for the last half hour, for the
dashboard's charts (calls per second by route, error rate and p50/p95/p99 per backend, the
discrepancy rate with its bound, the replication queue).

The guard hands it the window after each evaluation (so every worker's counters are in it, as in
the window); a point is the figures of the last `interval_s` seconds, taken once that long has passed
since the previous point. Memory is bounded: `keep_s / interval_s` points.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.replication.queue import QueueStats
from proxy.safety.window import HealthWindow

POINT_INTERVAL_S = 5.0
KEEP_S = 1800.0
BACKENDS = ("old", "new")


@dataclass(frozen=True, slots=True)
class Point:
    time: float
    doc: dict[str, Any]


class History:
    def __init__(self, replication: Callable[[], QueueStats] | None = None, interval_s: float = POINT_INTERVAL_S,
                 keep_s: float = KEEP_S) -> None:
        self._replication = replication
        self.interval_s = interval_s
        self._points: deque[Point] = deque(maxlen=max(1, int(keep_s / interval_s)))

    def observe(self, now: float, window: HealthWindow) -> None:
        """Take a point when interval_s has passed since the last one."""
        if self._points and now - self._points[-1].time < self.interval_s:
            return
        figures = window.figures(now, self.interval_s)
        seconds = figures.span_s
        interval = figures.discrepancy_interval
        doc: dict[str, Any] = {
            "time": now,
            "seconds": seconds,
            "served_per_second": {route: (figures.served.get(route, 0) / seconds if seconds else 0.0)
                                  for route in BACKENDS},
            "backends": {name: {"calls_per_second": f.throughput, "error_rate": f.error_rate,
                                "p50": f.p50, "p95": f.p95, "p99": f.p99, "calls": f.calls, "errors": f.errors}
                         for name in BACKENDS for f in (figures.of(name),)},
            "compared": figures.compared, "discrepancies": figures.discrepancies,
            "discrepancy_rate": figures.discrepancy_rate, "discrepancy_bound_high": interval.high,
        }
        if self._replication is not None:
            stats = self._replication()
            doc["replication"] = {"depth": stats.depth, "oldest_age_seconds": stats.oldest_age_s}
        self._points.append(Point(now, doc))

    def points(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [point.doc for point in self._points if point.time > since]
