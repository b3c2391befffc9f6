"""Shadow-mode and proxy metrics (the plan's ShadowModeMetrics), recorded on the hot path.

Recording is a dict increment and, for latency, one bisect into fixed log-spaced buckets, so it can
sit on every call; quantiles (p50/p95/p99) are read from the buckets only when someone asks (the
admin side's Prometheus collector, proxy.admin.metrics, reads them at scrape time).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping
from typing import Any

#: Latency bucket upper bounds in seconds: 10 µs to ~80 s, 8 buckets per doubling (~9 % wide).
_BOUNDS = [10e-6 * 2 ** (i / 8) for i in range(8 * 23)]


def bucket_quantile(counts: Mapping[int, int], q: float) -> float:
    """The q-quantile of a histogram given as {bucket index: count} (a window's difference of two
    readings of LatencyHistogram.counts): the upper bound of the bucket holding it, 0 when empty."""
    total = sum(counts.values())
    if not total:
        return 0.0
    rank = q * total
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= rank:
            return _BOUNDS[min(index, len(_BOUNDS) - 1)]
    return _BOUNDS[-1]


class LatencyHistogram:
    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(_BOUNDS, seconds)] += 1
        self.count += 1
        self.total += seconds

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding the q-th observation (0 when empty)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return _BOUNDS[min(index, len(_BOUNDS) - 1)]
        return _BOUNDS[-1]


class Metrics:
    def __init__(self) -> None:
        self.operations: Counter[tuple[str, str]] = Counter()  # (op, route)
        self.errors: Counter[tuple[str, str]] = Counter()  # (backend, op)
        self.latency: dict[tuple[str, str], LatencyHistogram] = {}  # (backend, op)

    def operation(self, op: str, route: str) -> None:
        self.operations[op, route] += 1

    def backend_call(self, backend: str, op: str, seconds: float, failed: bool) -> None:
        histogram = self.latency.get((backend, op))
        if histogram is None:
            histogram = self.latency[backend, op] = LatencyHistogram()
        # LatencyHistogram.observe in line: this runs on every backend call.
        histogram.counts[bisect.bisect_left(_BOUNDS, seconds)] += 1
        histogram.count += 1
        histogram.total += seconds
        if failed:
            self.errors[backend, op] += 1

    def to_document(self) -> dict[str, Any]:
        """The same figures for `turnout status --json`: operations by op and route, and latency
        quantiles (seconds) by backend and op."""
        operations: dict[str, dict[str, int]] = {}
        for (op, route), n in sorted(self.operations.items()):
            operations.setdefault(str(op), {})[str(route)] = n
        latency: dict[str, dict[str, dict[str, float]]] = {}
        for (backend, op), histogram in sorted(self.latency.items()):
            latency.setdefault(str(backend), {})[str(op)] = {
                "p50": histogram.quantile(0.5), "p95": histogram.quantile(0.95), "p99": histogram.quantile(0.99),
                "count": histogram.count, "errors": self.errors[backend, op],
            }
        return {"operations": operations, "latency": latency}

    def backend_error_rate(self, backend: str) -> float:
        calls = sum(h.count for (b, _), h in self.latency.items() if b == backend)
        errors = sum(n for (b, _), n in self.errors.items() if b == backend)
        return errors / calls if calls else 0.0
