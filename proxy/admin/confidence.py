"""The dashboard's confidence score, 0 to 100, from measured figures, with its terms shown.

The score is 100 minus the sum of penalties, never below 0. Each penalty is
`weight * min(1, measured / threshold)`, so it grows with its figure and stops at its weight (the
score is monotone in every term); thresholds are the flag file's rollback_triggers where armed, else
the defaults below. The terms, measured over the guard's health window:

- discrepancies: the 95 % Wilson upper bound of the discrepancy rate vs its threshold (weight 40);
  nothing compared at all costs 10 instead (no evidence either way);
- errors: new's error rate vs its threshold (25);
- latency: new's p99 above old's, as a share of old's, vs latency_increase (15), when both served;
- inconclusive: the window had fewer than min_calls calls of new (10);
- unhealthy backends: 15 for each backend whose last call failed (30 at most);
- replication lag: the oldest queued copy's age vs 60 s (10);
- verify: none recorded, or the last found differences (10).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Thresholds the score uses for a trigger the flag file does not arm.
DEFAULT_DISCREPANCY_RATE = 0.001
DEFAULT_ERROR_RATE = 0.01
DEFAULT_LATENCY_INCREASE = 0.20
REPLICATION_AGE_S = 60.0
FORMULA = "score = max(0, 100 - sum of penalties); each penalty = weight * min(1, measured / threshold)"


@dataclass(frozen=True, slots=True)
class Term:
    name: str
    weight: float
    measured: float | None  # None: not measured (no penalty, or a fixed one: see `text`)
    threshold: float | None
    penalty: float
    text: str

    def to_document(self) -> dict[str, Any]:
        return asdict(self)


def _scaled(name: str, weight: float, measured: float, threshold: float, text: str) -> Term:
    share = min(1.0, max(0.0, measured) / threshold) if threshold > 0 else (1.0 if measured > 0 else 0.0)
    return Term(name, weight, measured, threshold, weight * share, text)


@dataclass(frozen=True, slots=True)
class Evidence:
    """The measured figures the score is made of."""

    compared: int = 0
    discrepancy_bound: float = 0.0  # 95 % Wilson upper bound of the discrepancy rate
    new_error_rate: float = 0.0
    latency_increase: float | None = None  # new's p99 over old's, minus 1; None: not both served
    conclusive: bool = False
    unhealthy_backends: int = 0
    replication_age_s: float = 0.0
    verify_clean: bool | None = None  # None: no verify recorded
    discrepancy_threshold: float = DEFAULT_DISCREPANCY_RATE
    error_threshold: float = DEFAULT_ERROR_RATE
    latency_threshold: float = DEFAULT_LATENCY_INCREASE


def score_terms(e: Evidence) -> list[Term]:
    terms = []
    if e.compared:
        terms.append(_scaled("discrepancies", 40, e.discrepancy_bound, e.discrepancy_threshold,
                             "95 % upper bound of the discrepancy rate vs its threshold"))
    else:
        terms.append(Term("discrepancies", 10, None, None, 10, "nothing compared in the window: no evidence"))
    terms.append(_scaled("errors", 25, e.new_error_rate, e.error_threshold, "new's error rate vs its threshold"))
    if e.latency_increase is None:
        terms.append(Term("latency", 15, None, e.latency_threshold, 0, "old and new did not both serve: not compared"))
    else:
        terms.append(_scaled("latency", 15, e.latency_increase, e.latency_threshold,
                             "new's p99 above old's (share of old's) vs latency_increase"))
    terms.append(Term("inconclusive", 10, None, None, 0 if e.conclusive else 10,
                      "the window had enough calls of new" if e.conclusive
                      else "fewer calls of new in the window than min_calls"))
    terms.append(Term("unhealthy_backends", 30, float(e.unhealthy_backends), None,
                      min(30.0, 15.0 * e.unhealthy_backends), "15 for each backend whose last call failed"))
    terms.append(_scaled("replication_lag", 10, e.replication_age_s, REPLICATION_AGE_S,
                         "age of the oldest queued copy vs 60 s"))
    terms.append(Term("verify", 10, None, None, 0 if e.verify_clean else 10,
                      {True: "the last verify found the stores equal", False: "the last verify found differences",
                       None: "no verify recorded"}[e.verify_clean]))
    return terms


def confidence(e: Evidence) -> dict[str, Any]:
    terms = score_terms(e)
    score = max(0.0, 100.0 - sum(t.penalty for t in terms))
    return {"score": round(score), "exact": score, "formula": FORMULA, "terms": [t.to_document() for t in terms]}


def evidence(status: dict[str, Any], verify_clean: bool | None) -> Evidence:
    """The score's figures from the status document: its health window, backends and replication."""
    health = status.get("health") or {}
    window = health.get("window") or {}
    evaluation = health.get("evaluation") or {}
    backends = window.get("backends") or {}
    new = (backends.get("new") or {}).get("all") or {}
    old = (backends.get("old") or {}).get("all") or {}
    latency = None
    if new.get("calls") and old.get("calls") and old.get("p99"):
        latency = float(new.get("p99", 0.0)) / float(old["p99"]) - 1.0
    shares = window.get("discrepancies") or {}
    triggers = (status.get("flags") or {}).get("rollback_triggers") or {}
    return Evidence(
        compared=int(shares.get("compared", 0)), discrepancy_bound=float(shares.get("bound_high", 0.0)),
        new_error_rate=float(new.get("error_rate", 0.0)), latency_increase=latency,
        conclusive=bool(evaluation.get("conclusive", False)),
        unhealthy_backends=sum(1 for b in status.get("backends", []) if not b.get("healthy")),
        replication_age_s=float((status.get("replication") or {}).get("oldest_age_seconds", 0.0)),
        verify_clean=verify_clean,
        discrepancy_threshold=float(triggers.get("discrepancy_rate", DEFAULT_DISCREPANCY_RATE)),
        error_threshold=float(triggers.get("error_rate", DEFAULT_ERROR_RATE)),
        latency_threshold=float(triggers.get("latency_increase", DEFAULT_LATENCY_INCREASE)),
    )
