"""One process's figures since it started, as counters that only grow: what a health window is made of.

The hot path already counts every backend call (proxy.telemetry.metrics: a latency histogram and an
error count per backend and operation) and every comparison (the discrepancy report). A window is the
difference between two readings of those counters, so it costs the hot path nothing, and readings
from several processes (the workers of `turnout serve --workers N`, later a fleet) add up: each
process hands over its own counters as a JSON document and the window sums them.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from proxy.data.discrepancies import Report
from proxy.telemetry.metrics import Metrics

#: A (backend, op) pair, as the metrics key them: ("new", "get").
Pair = tuple[str, str]

#: A discrepancy of this kind is a failed shadow call: the error rate's, not the discrepancy rate's.
SHADOW_ERROR = "shadow_error"


@dataclass
class Counters:
    """Cumulative counts of one process (or a sum of several) at one moment."""

    #: When the process that counted them started; a reading with another start is a restarted
    #: process, whose counters began again from zero.
    started: float = 0.0
    calls: Counter[Pair] = field(default_factory=Counter)
    errors: Counter[Pair] = field(default_factory=Counter)
    #: Latency histogram bucket counts per pair (proxy.telemetry.metrics' buckets), sparse.
    buckets: dict[Pair, Counter[int]] = field(default_factory=dict)
    compared: int = 0
    discrepancies: int = 0  # shadow errors left out
    #: Operations served, by the route whose answer was returned ("old"/"new"), all operations summed.
    served: Counter[str] = field(default_factory=Counter)

    @classmethod
    def read(cls, metrics: Metrics, report: Report, started: float) -> Counters:
        """This process's counters now."""
        counters = cls(started=started)
        for pair, histogram in list(metrics.latency.items()):
            counters.calls[pair] = histogram.count
            counters.buckets[pair] = Counter({i: n for i, n in enumerate(histogram.counts) if n})
        counters.errors.update({pair: n for pair, n in list(metrics.errors.items()) if n})
        for (_, route), n in list(metrics.operations.items()):
            counters.served[str(route)] += n
        counters.compared = sum(report.compared.values())
        counters.discrepancies = report.total - report.by_kind.get(SHADOW_ERROR, 0)
        return counters

    def minus(self, earlier: Counters | None) -> Counters:
        """What was counted since `earlier`: everything, when earlier is None or from another start
        of the process (a restart counts from zero again)."""
        if earlier is None or earlier.started != self.started:
            return self
        return Counters(
            started=self.started,
            calls=_positive(self.calls - earlier.calls),
            errors=_positive(self.errors - earlier.errors),
            buckets={pair: buckets - earlier.buckets.get(pair, Counter()) for pair, buckets in self.buckets.items()},
            compared=max(0, self.compared - earlier.compared),
            discrepancies=max(0, self.discrepancies - earlier.discrepancies),
            served=+(self.served - earlier.served),
        )

    def add(self, other: Counters) -> None:
        """Fold another process's counts into these (the sum of a proxy's workers)."""
        self.calls.update(other.calls)
        self.errors.update(other.errors)
        for pair, buckets in other.buckets.items():
            self.buckets.setdefault(pair, Counter()).update(buckets)
        self.compared += other.compared
        self.discrepancies += other.discrepancies
        self.served.update(other.served)

    def to_document(self) -> dict[str, Any]:
        return {
            "started": self.started, "pid": os.getpid(), "time": time.time(),
            "calls": {_name(pair): n for pair, n in self.calls.items()},
            "errors": {_name(pair): n for pair, n in self.errors.items()},
            "buckets": {_name(pair): {str(i): n for i, n in buckets.items()} for pair, buckets in self.buckets.items()},
            "compared": self.compared, "discrepancies": self.discrepancies, "served": dict(self.served),
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Counters:
        return cls(
            started=float(doc["started"]),
            calls=Counter({_pair(name): int(n) for name, n in doc["calls"].items()}),
            errors=Counter({_pair(name): int(n) for name, n in doc["errors"].items()}),
            buckets={_pair(name): Counter({int(i): int(n) for i, n in buckets.items()})
                     for name, buckets in doc["buckets"].items()},
            compared=int(doc["compared"]), discrepancies=int(doc["discrepancies"]),
            served=Counter({str(route): int(n) for route, n in doc.get("served", {}).items()}),
        )


def _positive(counts: Counter[Pair]) -> Counter[Pair]:
    return +counts  # Counter subtraction already drops what is not positive; + says so


def _name(pair: Pair) -> str:
    return f"{pair[0]}/{pair[1]}"


def _pair(name: str) -> Pair:
    backend, _, op = name.partition("/")
    return backend, op
