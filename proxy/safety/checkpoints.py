"""The plan's go/no-go checkpoints (`turnout checkpoint`), each judged from measured figures.

Pure: the admin service gathers the figures (the health window and its trigger evaluation, the
discrepancy report since shadow mode began, the safety records, the last verify, replication,
backend health) into CheckpointInputs; this module only judges them. A figure that is missing never
makes a `go`: each checkpoint says in its detail whether missing means `no-go` (there is nothing
yet that could pass) or `inconclusive` (the migration is not at that phase, or too few calls).

The checkpoints, in the plan's order:

- `feature_parity` (after phase 1, shadow mode): every kind of operation (get, set, has, delete,
  keys) was compared in shadow mode since it began, and none of that kind differed. Any discrepancy
  of a kind is `no-go`; a kind never compared is `inconclusive`. One comparison of each kind is
  enough here (MIN_COMPARED_PER_OP): this checkpoint asks whether each kind was exercised and never
  differed; how sure the rate is lies with `discrepancy_rate`, which weighs every comparison with
  its uncertainty. Before any comparison (or when shadow mode never began): `no-go`.
- `discrepancy_rate` (after phase 2): discrepancies over compared operations since shadow mode
  began, judged by the 95 % Wilson interval as the trigger is: `go` when its upper bound is at or
  below the threshold (rollback_triggers.discrepancy_rate, else the plan's 0.0001), `no-go` when its
  lower bound is above it, `inconclusive` in between ("0 of 40 compared" is not 0 %). No comparison
  at all: `no-go`. The detail says how many clean comparisons in all a `go` needs.
- `error_rate_at_10` (after 10 %): new's error rate in the health window at or below
  rollback_triggers.error_rate (else 0.01), from at least min_calls calls of new. `inconclusive`
  while the read or write percentage in force is under 10, new storage is off, an override sends
  everything to old, or new had fewer than min_calls calls.
- `performance_at_50` (after 50 %): for each operation both stores ran at least min_calls times in
  the window, new's p99 over old's p99 minus one, at or below rollback_triggers.latency_increase
  (else 0.20); the worst operation decides, as for the trigger (an operation too rare to judge is
  listed, not held against the others). Throughput of both is shown. `inconclusive` under 50 %, with
  new storage off or an override in force, or when no operation can be judged.
- `readiness` (before phase 4, cutover): the cutover's own gates (proxy.control.cutover): a clean
  verify on record no older than MAX_VERIFY_AGE_S, replication within MAX_REPLICATION_DEPTH and
  MAX_REPLICATION_AGE_S, both backends healthy; and `discrepancy_rate` go. Any gate failed or
  unknown: `no-go`; only the discrepancy checkpoint inconclusive: `inconclusive`.
- `rollback_possible` (before phase 5): a rollback drill done (a rollback and a resume after it since
  shadow mode began), old healthy, and replication toward old caught up: at most
  ROLLBACK_MAX_LAG_S (5 s) for the oldest pending write and at most MAX_REPLICATION_DEPTH pending. A
  replayer that keeps up holds writes for well under a second; 5 s of lag means it is falling behind
  or failing, and a rollback must first drain it within its 30 s budget (DRAIN_TIMEOUT_S) before
  reads may leave new. Any of these missing or failed: `no-go`.

Overall `go` only when every checkpoint is go.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.control.cutover import MAX_REPLICATION_AGE_S, MAX_REPLICATION_DEPTH, MAX_VERIFY_AGE_S
from proxy.data.discrepancies import Report
from proxy.replication.queue import QueueStats
from proxy.routing.flags import Flags
from proxy.routing.router import Op
from proxy.routing.safetyflags import Triggers
from proxy.safety.records import SafetyRecords
from proxy.safety.triggers import Evaluation
from proxy.safety.wilson import Z_95, wilson
from proxy.safety.window import WindowFigures

GO = "go"
NO_GO = "no-go"
INCONCLUSIVE = "inconclusive"

#: The plan's thresholds, used when the flag file arms no such trigger.
PLAN_ERROR_RATE = 0.01
PLAN_LATENCY_INCREASE = 0.20
PLAN_DISCREPANCY_RATE = 0.0001
#: Each kind of operation must have been compared this many times for feature parity (see above).
MIN_COMPARED_PER_OP = 1
#: The percentage (read and write) in force from which the 10 % and 50 % checkpoints are measured.
ERROR_RATE_PERCENTAGE = 10.0
PERFORMANCE_PERCENTAGE = 50.0
#: Replication lag toward old that still leaves a rollback possible (see above).
ROLLBACK_MAX_LAG_S = 5.0

OPERATIONS = tuple(op.value for op in Op)


@dataclass(frozen=True, slots=True)
class CheckpointInputs:
    now: float
    flags: Flags  # the effective flags in force (a canary's step already in the percentages)
    overridden: bool  # an override (rollback) is in force
    window: WindowFigures  # the guard's current health window
    evaluation: Evaluation  # the triggers over that window
    since_shadow: Report | None  # discrepancies and comparisons since shadow mode began; None: it never began
    records: SafetyRecords
    last_verify: dict[str, Any] | None  # statedir.last_verify's document ({"clean": bool, ...})
    last_verify_age_s: float | None
    replication: QueueStats
    backends_healthy: Mapping[str, bool]  # "old"/"new" -> healthy


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    phase: str
    verdict: str  # GO, NO_GO or INCONCLUSIVE
    measured: Any  # a number, a small dict of numbers, or None when nothing was measured
    threshold: Any
    detail: str

    def to_document(self) -> dict[str, Any]:
        return {"name": self.name, "phase": self.phase, "verdict": self.verdict, "measured": self.measured,
                "threshold": self.threshold, "detail": self.detail}


def evaluate_checkpoints(inputs: CheckpointInputs) -> dict[str, Any]:
    """`{"go", "checkpoints": [{"name", "phase", "verdict", "measured", "threshold", "detail"}]}`."""
    triggers = inputs.flags.rollback_triggers or Triggers()
    discrepancy = discrepancy_rate(inputs.since_shadow, _or(triggers.discrepancy_rate, PLAN_DISCREPANCY_RATE))
    checkpoints = (
        feature_parity(inputs.since_shadow),
        discrepancy,
        error_rate_at_10(inputs, _or(triggers.error_rate, PLAN_ERROR_RATE)),
        performance_at_50(inputs, _or(triggers.latency_increase, PLAN_LATENCY_INCREASE)),
        readiness(inputs, discrepancy),
        rollback_possible(inputs),
    )
    return {"go": all(c.verdict == GO for c in checkpoints), "checkpoints": [c.to_document() for c in checkpoints]}


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def feature_parity(report: Report | None) -> Checkpoint:
    name, phase = "feature_parity", "after phase 1 (shadow mode)"
    threshold = {"discrepancies_per_op": 0, "min_compared_per_op": MIN_COMPARED_PER_OP}
    if report is None:
        return Checkpoint(name, phase, NO_GO, None, threshold, "no-go: shadow mode has not begun, nothing compared")
    ops = sorted(set(OPERATIONS) | set(report.compared) | set(report.by_op))
    measured = {op: {"compared": report.compared.get(op, 0), "discrepancies": report.by_op.get(op, 0)} for op in ops}
    if not any(report.compared.values()) and not report.total:
        return Checkpoint(name, phase, NO_GO, measured, threshold,
                          "no-go: no operation compared since shadow mode began")
    differing = [op for op in ops if report.by_op.get(op, 0)]
    if differing:
        return Checkpoint(name, phase, NO_GO, measured, threshold,
                          "discrepancies in " + ", ".join(f"{op} ({report.by_op[op]})" for op in differing))
    untested = [op for op in OPERATIONS if report.compared.get(op, 0) < MIN_COMPARED_PER_OP]
    if untested:
        return Checkpoint(name, phase, INCONCLUSIVE, measured, threshold,
                          "inconclusive: never compared in shadow mode: " + ", ".join(untested))
    return Checkpoint(name, phase, GO, measured, threshold,
                      f"every operation compared ({sum(report.compared.values())} in all), none differed")


def discrepancy_rate(report: Report | None, threshold: float) -> Checkpoint:
    name, phase = "discrepancy_rate", "after phase 2"
    if report is None:
        return Checkpoint(name, phase, NO_GO, None, threshold, "no-go: shadow mode has not begun, nothing compared")
    compared = sum(report.compared.values())
    discrepancies = min(report.total, compared) if compared else report.total
    interval = wilson(discrepancies, compared)
    measured = {"compared": compared, "discrepancies": discrepancies,
                "rate": discrepancies / compared if compared else None,
                "bound_low": interval.low if compared else None, "bound_high": interval.high if compared else None}
    if compared == 0:
        return Checkpoint(name, phase, NO_GO, measured, threshold,
                          "no-go: no operation compared since shadow mode began")
    shown = (f"{discrepancies} in {compared} compared, rate {discrepancies / compared:.4%}, "
             f"95 % interval {interval.low:.4%} to {interval.high:.4%}")
    if interval.high <= threshold:
        return Checkpoint(name, phase, GO, measured, threshold, f"{shown}: upper bound within {threshold:.4%}")
    if interval.low > threshold:
        return Checkpoint(name, phase, NO_GO, measured, threshold, f"{shown}: lower bound above {threshold:.4%}")
    return Checkpoint(name, phase, INCONCLUSIVE, measured, threshold,
                      f"inconclusive: {shown} straddles {threshold:.4%}" + _clean_needed(discrepancies, threshold))


def _clean_needed(discrepancies: int, threshold: float) -> str:
    """How many comparisons in all would bring the bound within the threshold, were none to differ."""
    if discrepancies:
        return ""  # with discrepancies the bound's path depends on the future rate: no honest figure
    # With 0 events the upper bound is z²/(n+z²); at or below t from n >= z²(1-t)/t.
    needed = math.ceil(Z_95 * Z_95 * (1 - threshold) / threshold) if threshold > 0 else None
    return "" if needed is None else f" (a go needs about {needed} clean comparisons in all)"


def _percentage_gate(inputs: CheckpointInputs, percentage: float) -> str | None:
    """Why the window cannot show the figures of this step, or None when it can."""
    flags = inputs.flags
    if inputs.overridden:
        return "an override sends everything to old: the window measures no step"
    if not flags.use_new_storage:
        return "use_new_storage is off"
    if flags.read_percentage < percentage or flags.write_percentage < percentage:
        return (f"not at {percentage:g} % yet (read {flags.read_percentage:g} %, "
                f"write {flags.write_percentage:g} %)")
    return None


def error_rate_at_10(inputs: CheckpointInputs, threshold: float) -> Checkpoint:
    name, phase = "error_rate_at_10", f"after {ERROR_RATE_PERCENTAGE:g} %"
    new = inputs.window.of("new")
    min_calls = inputs.evaluation.min_calls
    limits = {"error_rate": threshold, "min_calls": min_calls, "percentage": ERROR_RATE_PERCENTAGE}
    measured = {"error_rate": new.error_rate if new.calls else None, "calls": new.calls, "errors": new.errors,
                "read_percentage": inputs.flags.read_percentage, "write_percentage": inputs.flags.write_percentage,
                "window_s": inputs.window.span_s}
    shown = f"{new.errors} of {new.calls} calls of new failed over {inputs.window.span_s:.0f}s"
    if (why := _percentage_gate(inputs, ERROR_RATE_PERCENTAGE)) is not None:
        return Checkpoint(name, phase, INCONCLUSIVE, measured, limits, f"inconclusive: {why}")
    if new.calls < min_calls:
        return Checkpoint(name, phase, INCONCLUSIVE, measured, limits,
                          f"inconclusive: {shown}, fewer than min_calls {min_calls}")
    if new.error_rate > threshold:
        return Checkpoint(name, phase, NO_GO, measured, limits, f"{shown}: {new.error_rate:.2%} above {threshold:.2%}")
    return Checkpoint(name, phase, GO, measured, limits, f"{shown}: {new.error_rate:.2%} within {threshold:.2%}")


def performance_at_50(inputs: CheckpointInputs, threshold: float) -> Checkpoint:
    name, phase = "performance_at_50", f"after {PERFORMANCE_PERCENTAGE:g} %"
    window = inputs.window
    min_calls = inputs.evaluation.min_calls
    limits = {"latency_increase": threshold, "min_calls": min_calls, "percentage": PERFORMANCE_PERCENTAGE}
    ops: dict[str, dict[str, Any]] = {}
    too_few: list[str] = []
    for op in sorted({op for _, op in window.pairs}):
        new, old = window.pairs.get(("new", op)), window.pairs.get(("old", op))
        if new is None or old is None or new.calls < min_calls or old.calls < min_calls or old.p99 <= 0:
            too_few.append(op)
            continue
        ops[op] = {"new_p99": new.p99, "old_p99": old.p99, "increase": new.p99 / old.p99 - 1.0,
                   "new_calls": new.calls, "old_calls": old.calls,
                   "new_throughput": new.throughput, "old_throughput": old.throughput}
    worst = max(ops, key=lambda op: ops[op]["increase"]) if ops else None
    measured = {"worst_op": worst, "increase": ops[worst]["increase"] if worst else None, "ops": ops,
                "new_throughput": window.of("new").throughput, "old_throughput": window.of("old").throughput,
                "read_percentage": inputs.flags.read_percentage, "write_percentage": inputs.flags.write_percentage}
    rare = f"; too few calls to judge: {', '.join(too_few)}" if too_few else ""
    if (why := _percentage_gate(inputs, PERFORMANCE_PERCENTAGE)) is not None:
        return Checkpoint(name, phase, INCONCLUSIVE, measured, limits, f"inconclusive: {why}")
    if worst is None:
        return Checkpoint(name, phase, INCONCLUSIVE, measured, limits,
                          f"inconclusive: no operation both stores ran at least {min_calls} times in the window")
    figures = ops[worst]
    shown = (f"worst {worst}: p99 new {figures['new_p99'] * 1000:.3f} ms vs old {figures['old_p99'] * 1000:.3f} ms "
             f"({figures['increase']:+.1%}); new {measured['new_throughput']:.1f}/s, "
             f"old {measured['old_throughput']:.1f}/s")
    if figures["increase"] > threshold:
        return Checkpoint(name, phase, NO_GO, measured, limits, f"{shown}, above +{threshold:.0%}{rare}")
    return Checkpoint(name, phase, GO, measured, limits, f"{shown}, within +{threshold:.0%}{rare}")


def readiness(inputs: CheckpointInputs, discrepancy: Checkpoint) -> Checkpoint:
    name, phase = "readiness", "before phase 4 (cutover)"
    limits = {"verify_clean": True, "verify_age_s": MAX_VERIFY_AGE_S, "replication_depth": MAX_REPLICATION_DEPTH,
              "replication_age_s": MAX_REPLICATION_AGE_S, "backends_healthy": True, "discrepancy_rate": GO}
    failed: list[str] = []
    verify, age = inputs.last_verify, inputs.last_verify_age_s
    clean = None if verify is None else verify.get("clean") is True
    if verify is None or age is None:
        failed.append("no verify on record: run `turnout verify`")
    elif not clean:
        failed.append("the last verify was not clean")
    elif age > MAX_VERIFY_AGE_S:
        failed.append(f"the last verify is {age:.0f}s old, over {MAX_VERIFY_AGE_S:.0f}s")
    rep = inputs.replication
    if rep.depth > MAX_REPLICATION_DEPTH or rep.oldest_age_s > MAX_REPLICATION_AGE_S:
        failed.append(f"replication behind: {rep.depth} pending, oldest {rep.oldest_age_s:.1f}s")
    failed.extend(_unhealthy(inputs.backends_healthy, ("old", "new")))
    measured = {"verify_clean": clean, "verify_age_s": age, "replication_depth": rep.depth,
                "replication_age_s": rep.oldest_age_s,
                "backends_healthy": {b: inputs.backends_healthy.get(b) for b in ("old", "new")},
                "discrepancy_rate": discrepancy.verdict}
    if discrepancy.verdict == NO_GO:
        failed.append(f"discrepancy_rate no-go: {discrepancy.detail}")
    if failed:
        return Checkpoint(name, phase, NO_GO, measured, limits, "; ".join(failed))
    if discrepancy.verdict != GO:
        return Checkpoint(name, phase, INCONCLUSIVE, measured, limits,
                          f"inconclusive: every gate passes, but discrepancy_rate is {discrepancy.verdict}")
    return Checkpoint(name, phase, GO, measured, limits,
                      f"verify clean {age:.0f}s ago, {rep.depth} pending replication, both backends healthy, "
                      "discrepancy rate go")


def rollback_possible(inputs: CheckpointInputs) -> Checkpoint:
    name, phase = "rollback_possible", "before phase 5"
    limits = {"drill_done": True, "replication_age_s": ROLLBACK_MAX_LAG_S, "replication_depth": MAX_REPLICATION_DEPTH,
              "old_healthy": True}
    drilled, drill = inputs.records.drill_done()
    rep = inputs.replication
    measured = {"drill_done": drilled, "replication_depth": rep.depth, "replication_age_s": rep.oldest_age_s,
                "old_healthy": inputs.backends_healthy.get("old")}
    failed: list[str] = [] if drilled else [f"no rollback drill: {drill}"]
    if rep.oldest_age_s > ROLLBACK_MAX_LAG_S or rep.depth > MAX_REPLICATION_DEPTH:
        last = f" (last error: {rep.last_error})" if rep.last_error else ""
        failed.append(f"replication toward old behind: {rep.depth} pending, oldest {rep.oldest_age_s:.1f}s{last}")
    failed.extend(_unhealthy(inputs.backends_healthy, ("old",)))
    if failed:
        return Checkpoint(name, phase, NO_GO, measured, limits, "; ".join(failed))
    return Checkpoint(name, phase, GO, measured, limits,
                      f"{drill}; replication toward old {rep.depth} pending, oldest {rep.oldest_age_s:.1f}s; "
                      "old healthy")


def _unhealthy(healthy: Mapping[str, bool], names: tuple[str, ...]) -> list[str]:
    return [f"{b} {'health unknown' if b not in healthy else 'unhealthy'}" for b in names if healthy.get(b) is not True]
