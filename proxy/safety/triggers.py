"""The plan's rollback triggers judged over a health window: each one ok, tripped or inconclusive.

Fewer than `min_calls` calls of new in the window make every trigger inconclusive: such a window never
passes a gate and never trips a trigger (a canary whose new store got no traffic has shown nothing,
good or bad).

- `error_rate`: new's failed calls over its calls; trips above the threshold.
- `latency_increase`: for each operation both stores ran at least min_calls times in the window, new's
  p99 over old's, minus one; the worst operation counts. No such operation: inconclusive.
- `discrepancy_rate`: discrepancies over compared operations, judged by its 95 % Wilson interval
  rather than the point rate. It trips only when the whole interval lies above the threshold (its
  lower bound is above it: the rate is too high beyond reasonable doubt), and is ok only when the
  whole interval lies at or below it (its upper bound): "0 of 40 compared" has an upper bound of 8.8 %,
  so it is no evidence of a rate of 0.01 %. In between it is inconclusive: it holds a canary and fails
  a gate, but rolls nothing back. A trigger on the upper bound alone would roll back every healthy
  canary whose window holds fewer than about 3/threshold comparisons (38,000 at 0.0001), which is
  "no values found" failing a rollout again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from proxy.routing.safetyflags import Triggers
from proxy.safety.window import WindowFigures


class Verdict(enum.StrEnum):
    OK = "ok"
    TRIPPED = "tripped"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class TriggerVerdict:
    name: str
    verdict: Verdict
    measured: float | None  # None: nothing to measure in this window
    threshold: float
    detail: str
    bound_low: float | None = None  # discrepancy_rate: its 95 % interval
    bound_high: float | None = None

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "verdict": self.verdict.value, "measured": self.measured,
                               "threshold": self.threshold, "detail": self.detail}
        if self.bound_high is not None:
            doc.update(bound_low=self.bound_low, bound_high=self.bound_high)
        return doc


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Every armed trigger's verdict over one window."""

    conclusive: bool  # new had at least min_calls calls in the window
    new_calls: int
    min_calls: int
    window_s: float
    verdicts: tuple[TriggerVerdict, ...]

    @property
    def tripped(self) -> TriggerVerdict | None:
        return next((v for v in self.verdicts if v.verdict is Verdict.TRIPPED), None)

    @property
    def healthy(self) -> bool:
        """Conclusive, and every armed trigger ok: what lets a canary advance."""
        return self.conclusive and all(v.verdict is Verdict.OK for v in self.verdicts)

    def why_not_healthy(self) -> str:
        if not self.conclusive:
            return (f"inconclusive: {self.new_calls} calls of new in the window, fewer than min_calls "
                    f"{self.min_calls}")
        return "; ".join(f"{v.name} {v.verdict.value}: {v.detail}"
                         for v in self.verdicts if v.verdict is not Verdict.OK)

    def to_document(self) -> dict[str, Any]:
        return {"conclusive": self.conclusive, "new_calls": self.new_calls, "min_calls": self.min_calls,
                "window_seconds": self.window_s, "healthy": self.healthy,
                "triggers": [v.to_document() for v in self.verdicts]}


def evaluate(figures: WindowFigures, triggers: Triggers) -> Evaluation:
    new_calls = figures.of("new").calls
    conclusive = new_calls >= triggers.min_calls
    verdicts: list[TriggerVerdict] = []
    if triggers.error_rate is not None:
        verdicts.append(_error_rate(figures, triggers.error_rate, conclusive))
    if triggers.latency_increase is not None:
        verdicts.append(_latency(figures, triggers.latency_increase, triggers.min_calls, conclusive))
    if triggers.discrepancy_rate is not None:
        verdicts.append(_discrepancy(figures, triggers.discrepancy_rate, conclusive))
    return Evaluation(conclusive, new_calls, triggers.min_calls, triggers.window_s, tuple(verdicts))


def _error_rate(figures: WindowFigures, threshold: float, conclusive: bool) -> TriggerVerdict:
    new = figures.of("new")
    detail = f"{new.errors} of {new.calls} calls of new failed over {figures.span_s:.0f}s"
    if not conclusive:
        return TriggerVerdict("error_rate", Verdict.INCONCLUSIVE, new.error_rate if new.calls else None,
                              threshold, detail)
    verdict = Verdict.TRIPPED if new.error_rate > threshold else Verdict.OK
    return TriggerVerdict("error_rate", verdict, new.error_rate, threshold, detail)


def _latency(figures: WindowFigures, threshold: float, min_calls: int, conclusive: bool) -> TriggerVerdict:
    worst: tuple[float, str] | None = None
    for (backend, op), new in figures.pairs.items():
        old = figures.pairs.get(("old", op))
        if backend != "new" or old is None or new.calls < min_calls or old.calls < min_calls or old.p99 <= 0:
            continue
        increase = new.p99 / old.p99 - 1.0
        if worst is None or increase > worst[0]:
            worst = (increase, f"{op}: p99 new {new.p99 * 1000:.3f} ms vs old {old.p99 * 1000:.3f} ms "
                               f"({new.calls} and {old.calls} calls)")
    if worst is None or not conclusive:
        detail = (worst[1] if worst else
                  f"no operation both stores ran at least {min_calls} times in the window")
        return TriggerVerdict("latency_increase", Verdict.INCONCLUSIVE, None if worst is None else worst[0],
                              threshold, detail)
    verdict = Verdict.TRIPPED if worst[0] > threshold else Verdict.OK
    return TriggerVerdict("latency_increase", verdict, worst[0], threshold, worst[1])


def _discrepancy(figures: WindowFigures, threshold: float, conclusive: bool) -> TriggerVerdict:
    interval = figures.discrepancy_interval
    detail = (f"{figures.discrepancies} discrepancies in {figures.compared} compared "
              f"(95 % interval {interval.low:.4%} to {interval.high:.4%})")
    if not conclusive or figures.compared == 0:
        verdict = Verdict.INCONCLUSIVE
    elif interval.low > threshold:
        verdict = Verdict.TRIPPED
    elif interval.high <= threshold:
        verdict = Verdict.OK
    else:
        verdict = Verdict.INCONCLUSIVE
    return TriggerVerdict("discrepancy_rate", verdict, figures.discrepancy_rate if figures.compared else None,
                          threshold, detail, bound_low=interval.low, bound_high=interval.high)
