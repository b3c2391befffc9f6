"""The health window: calls, errors, p50/p95/p99 and throughput per backend and operation, and the
discrepancy rate with its 95 % interval, over the last `window` seconds.

The guard reads every process's counters once per evaluation period (proxy.safety.counters) and hands
the readings here; a window's figures are the difference between the newest reading and the oldest
one inside the window. A window may also be cut to start no earlier than a given moment (a resume, a
canary step), so that figures measured under other routes never judge the current ones.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.safety.counters import Counters, Pair
from proxy.safety.wilson import Interval, wilson
from proxy.telemetry.metrics import bucket_quantile

#: One reading: every process's counters, by a name for the process ("0", "1", ... for workers).
Readings = Mapping[str, Counters]


@dataclass(frozen=True, slots=True)
class CallFigures:
    """One backend's calls (of one operation, or of all) over a window."""

    calls: int = 0
    errors: int = 0
    p50: float = 0.0  # seconds
    p95: float = 0.0
    p99: float = 0.0
    throughput: float = 0.0  # calls per second over the window

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    def to_document(self) -> dict[str, Any]:
        return {"calls": self.calls, "errors": self.errors, "error_rate": self.error_rate,
                "p50": self.p50, "p95": self.p95, "p99": self.p99, "throughput": self.throughput}


@dataclass(frozen=True, slots=True)
class WindowFigures:
    start: float  # unix time of the oldest reading used
    end: float  # of the newest
    pairs: Mapping[Pair, CallFigures] = field(default_factory=dict)  # (backend, op)
    backends: Mapping[str, CallFigures] = field(default_factory=dict)  # all of a backend's operations
    compared: int = 0
    discrepancies: int = 0
    served: Mapping[str, int] = field(default_factory=dict)  # operations answered, by route

    @property
    def span_s(self) -> float:
        return max(0.0, self.end - self.start)

    def of(self, backend: str) -> CallFigures:
        return self.backends.get(backend, CallFigures())

    @property
    def discrepancy_rate(self) -> float:
        return self.discrepancies / self.compared if self.compared else 0.0

    @property
    def discrepancy_interval(self) -> Interval:
        return wilson(self.discrepancies, self.compared)

    def to_document(self) -> dict[str, Any]:
        """As status and the dashboard show it: the point rate always beside its bound."""
        interval = self.discrepancy_interval
        by_backend: dict[str, dict[str, Any]] = {}
        for (backend, op), figures in sorted(self.pairs.items()):
            by_backend.setdefault(backend, {"all": self.of(backend).to_document(), "ops": {}})["ops"][op] = \
                figures.to_document()
        return {
            "start_unix": self.start, "end_unix": self.end, "seconds": self.span_s,
            "backends": by_backend,
            "served": {route: {"operations": n, "per_second": n / self.span_s if self.span_s > 0 else 0.0}
                       for route, n in sorted(self.served.items())},
            "discrepancies": {"compared": self.compared, "discrepancies": self.discrepancies,
                              "rate": self.discrepancy_rate, "bound_low": interval.low, "bound_high": interval.high,
                              "confidence": 0.95},
        }


class HealthWindow:
    """Readings over time, and the figures of any window ending at the newest."""

    def __init__(self) -> None:
        self._readings: deque[tuple[float, Readings]] = deque()

    def add(self, now: float, readings: Readings, keep_s: float) -> None:
        """Take one reading; forget those older than keep_s (the longest window asked for)."""
        self._readings.append((now, dict(readings)))
        while len(self._readings) > 2 and self._readings[1][0] <= now - keep_s:
            self._readings.popleft()  # the oldest is kept while the next one is still inside keep_s

    def clear(self) -> None:
        self._readings.clear()

    def figures(self, now: float, window_s: float, since: float = 0.0) -> WindowFigures:
        """The figures of the last window_s seconds, or since `since` when that is later."""
        if not self._readings:
            return WindowFigures(start=now, end=now)
        cut = max(now - window_s, since)
        end, newest = self._readings[-1]
        inside = [(t, readings) for t, readings in self._readings if t >= cut]
        start = inside[0][0] if inside else end
        total = Counters()
        for source, counters in newest.items():
            base = next((readings[source] for _, readings in inside if source in readings), None)
            total.add(counters.minus(base))
        return _figures(total, start, end)


def _figures(total: Counters, start: float, end: float) -> WindowFigures:
    seconds = end - start
    pairs = {pair: _call_figures(total.calls[pair], total.errors[pair], total.buckets.get(pair, Counter()), seconds)
             for pair in total.calls if total.calls[pair]}
    backends: dict[str, CallFigures] = {}
    for backend in {b for b, _ in pairs}:
        merged: Counter[int] = Counter()
        for (b, _), buckets in total.buckets.items():
            if b == backend:
                merged.update(buckets)
        calls = sum(n for (b, _), n in total.calls.items() if b == backend)
        errors = sum(n for (b, _), n in total.errors.items() if b == backend)
        backends[backend] = _call_figures(calls, errors, merged, seconds)
    return WindowFigures(start=start, end=end, pairs=pairs, backends=backends,
                         compared=total.compared, discrepancies=total.discrepancies, served=dict(total.served))


def _call_figures(calls: int, errors: int, buckets: Mapping[int, int], seconds: float) -> CallFigures:
    return CallFigures(calls=calls, errors=min(errors, calls), p50=bucket_quantile(buckets, 0.50),
                       p95=bucket_quantile(buckets, 0.95), p99=bucket_quantile(buckets, 0.99),
                       throughput=calls / seconds if seconds > 0 else 0.0)
