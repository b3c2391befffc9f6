"""The plan's go/no-go checkpoints judged from measured figures (proxy.safety.checkpoints)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from proxy.control.cutover import MAX_REPLICATION_DEPTH, MAX_VERIFY_AGE_S
from proxy.data.discrepancies import Discrepancy, Report
from proxy.replication.queue import QueueStats
from proxy.routing.flags import Flags
from proxy.routing.safetyflags import Triggers
from proxy.safety.checkpoints import (
    OPERATIONS,
    CheckpointInputs,
    evaluate_checkpoints,
)
from proxy.safety.records import Event, SafetyRecords
from proxy.safety.triggers import evaluate
from proxy.safety.window import CallFigures, WindowFigures

NOW = 1_800_000_000.0
SHADOW_SINCE = NOW - 3600


def report(compared: Mapping[str, int], discrepancies: Mapping[str, int] | None = None) -> Report:
    """A discrepancy report as the log reader builds one: compared counts, then each discrepancy added."""
    result = Report()
    result.compared.update(compared)
    for op, n in (discrepancies or {}).items():
        for i in range(n):
            result.add(Discrepancy(time=NOW, op=op, key=f"k{i}", kind="value_mismatch", primary="1", shadow="2",
                                   route="old", revision="r1"))
    return result


def every_op(n: int) -> dict[str, int]:
    return dict.fromkeys(OPERATIONS, n)


def window(new: Mapping[str, CallFigures] | None = None, old: Mapping[str, CallFigures] | None = None,
           seconds: float = 60.0) -> WindowFigures:
    pairs = {**{("new", op): f for op, f in (new or {}).items()}, **{("old", op): f for op, f in (old or {}).items()}}
    backends = {}
    for backend, ops in (("new", new or {}), ("old", old or {})):
        if ops:
            calls = sum(f.calls for f in ops.values())
            backends[backend] = CallFigures(calls=calls, errors=sum(f.errors for f in ops.values()),
                                            p99=max(f.p99 for f in ops.values()), throughput=calls / seconds)
    return WindowFigures(start=NOW - seconds, end=NOW, pairs=pairs, backends=backends)


def calls(n: int, errors: int = 0, p99: float = 0.002, seconds: float = 60.0) -> CallFigures:
    return CallFigures(calls=n, errors=errors, p50=p99 / 2, p95=p99 * 0.9, p99=p99, throughput=n / seconds)


DRILLED = SafetyRecords(SHADOW_SINCE, (Event("rollback", SHADOW_SINCE + 60), Event("resume", SHADOW_SINCE + 120)))


def inputs(**changes: Any) -> CheckpointInputs:
    """Every figure healthy and measured at 50 %: each checkpoint go; a test changes what it judges."""
    flags = changes.pop("flags", Flags(use_new_storage=True, shadow_mode_enabled=True, read_percentage=50,
                                       write_percentage=50))
    figures = changes.pop("window", window(new={"get": calls(500, errors=1), "set": calls(300)},
                                          old={"get": calls(500), "set": calls(300)}))
    base = CheckpointInputs(
        now=NOW, flags=flags, overridden=False, window=figures,
        evaluation=evaluate(figures, flags.rollback_triggers or Triggers()),
        since_shadow=report(every_op(10_000)), records=DRILLED,
        last_verify={"clean": True, "missing": 0, "different": 0, "extra": 0}, last_verify_age_s=600.0,
        replication=QueueStats(depth=3, oldest_age_s=0.2, replayed=1000, failures=0, last_error=None),
        backends_healthy={"old": True, "new": True},
    )
    return replace(base, **changes)


def checkpoint(result: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in result["checkpoints"] if c["name"] == name)
    return found


def verdict(name: str, **changes: Any) -> str:
    found: str = checkpoint(evaluate_checkpoints(inputs(**changes)), name)["verdict"]
    return found


def test_all_figures_measured_and_within_thresholds_is_go() -> None:
    """With every figure measured and within its threshold, every checkpoint and the whole report is go."""
    result = evaluate_checkpoints(inputs())
    assert [(c["name"], c["verdict"]) for c in result["checkpoints"]] == [
        ("feature_parity", "go"), ("discrepancy_rate", "go"), ("error_rate_at_10", "go"),
        ("performance_at_50", "go"), ("readiness", "go"), ("rollback_possible", "go")]
    assert result["go"] is True


def test_nothing_measured_is_never_go() -> None:
    """Before shadow mode, traffic, verify, drill or health: no checkpoint is go and the report is no-go."""
    empty = WindowFigures(start=NOW, end=NOW)
    result = evaluate_checkpoints(CheckpointInputs(
        now=NOW, flags=Flags(), overridden=False, window=empty, evaluation=evaluate(empty, Triggers()),
        since_shadow=None, records=SafetyRecords(None, ()), last_verify=None, last_verify_age_s=None,
        replication=QueueStats(0, 0.0, 0, 0, None), backends_healthy={}))
    verdicts = {c["name"]: c["verdict"] for c in result["checkpoints"]}
    assert verdicts == {"feature_parity": "no-go", "discrepancy_rate": "no-go", "error_rate_at_10": "inconclusive",
                        "performance_at_50": "inconclusive", "readiness": "no-go", "rollback_possible": "no-go"}
    assert result["go"] is False


def test_report_is_json_with_the_contract_fields() -> None:
    """Every checkpoint carries name, phase, verdict, measured, threshold and detail, and the report is JSON."""
    result = json.loads(json.dumps(evaluate_checkpoints(inputs(since_shadow=None))))
    assert result["go"] is False
    for c in result["checkpoints"]:
        assert set(c) == {"name", "phase", "verdict", "measured", "threshold", "detail"}
        assert c["verdict"] in ("go", "no-go", "inconclusive")
        assert c["detail"]


# feature_parity


def test_parity_go_when_every_op_compared_without_discrepancy() -> None:
    """Each of get, set, has, delete and keys compared at least once and none differed: go."""
    assert verdict("feature_parity", since_shadow=report(every_op(1))) == "go"


def test_parity_no_go_on_a_discrepancy_of_one_op() -> None:
    """One op that differed fails parity, however many comparisons the others had; the op is named."""
    result = evaluate_checkpoints(inputs(since_shadow=report(every_op(10_000), {"delete": 2})))
    parity = checkpoint(result, "feature_parity")
    assert parity["verdict"] == "no-go"
    assert "delete (2)" in parity["detail"]
    assert parity["measured"]["delete"] == {"compared": 10_000, "discrepancies": 2}


def test_parity_inconclusive_when_an_op_was_never_compared() -> None:
    """An operation kind shadow mode never compared leaves parity unproven: inconclusive, naming it."""
    compared = every_op(500)
    del compared["keys"]
    result = evaluate_checkpoints(inputs(since_shadow=report(compared)))
    assert checkpoint(result, "feature_parity")["verdict"] == "inconclusive"
    assert "keys" in checkpoint(result, "feature_parity")["detail"]


def test_parity_no_go_before_any_comparison() -> None:
    """Shadow mode began but nothing was compared yet, or it never began: no-go."""
    assert verdict("feature_parity", since_shadow=report({})) == "no-go"
    assert verdict("feature_parity", since_shadow=None) == "no-go"


# discrepancy_rate


def test_discrepancy_none_compared_is_no_go() -> None:
    """`turnout checkpoint` says no-go before any shadow comparison."""
    result = evaluate_checkpoints(inputs(since_shadow=report({})))
    rate = checkpoint(result, "discrepancy_rate")
    assert rate["verdict"] == "no-go"
    assert rate["measured"]["compared"] == 0
    assert verdict("discrepancy_rate", since_shadow=None) == "no-go"


def test_discrepancy_zero_of_forty_is_inconclusive_with_its_bound() -> None:
    """0 of 40 compared is no evidence of 0.01 %: inconclusive, showing the point rate and both bounds."""
    result = evaluate_checkpoints(inputs(since_shadow=report({"get": 40})))
    rate = checkpoint(result, "discrepancy_rate")
    assert rate["verdict"] == "inconclusive"
    assert rate["measured"]["compared"] == 40
    assert rate["measured"]["rate"] == 0.0
    assert rate["measured"]["bound_low"] == 0.0
    assert rate["measured"]["bound_high"] == pytest.approx(0.0876, abs=0.0005)
    assert rate["threshold"] == 0.0001
    assert "38411 clean comparisons" in rate["detail"]


def test_discrepancy_enough_clean_comparisons_is_go() -> None:
    """Enough clean comparisons bring the upper bound within 0.01 %: go; one fewer is not enough."""
    assert verdict("discrepancy_rate", since_shadow=report({"get": 38_411})) == "go"
    assert verdict("discrepancy_rate", since_shadow=report({"get": 38_410})) == "inconclusive"


def test_discrepancy_rate_clearly_above_is_no_go() -> None:
    """50 discrepancies in 1000 compared: the lower bound is above the threshold, no-go."""
    result = evaluate_checkpoints(inputs(since_shadow=report({"get": 1000}, {"get": 50})))
    rate = checkpoint(result, "discrepancy_rate")
    assert rate["verdict"] == "no-go"
    assert rate["measured"]["rate"] == 0.05
    assert rate["measured"]["bound_low"] > 0.0001


def test_discrepancy_threshold_comes_from_the_flag_file() -> None:
    """rollback_triggers.discrepancy_rate replaces the plan's 0.0001: 0 of 40 is within 10 %."""
    flags = Flags(use_new_storage=True, read_percentage=50, write_percentage=50,
                  rollback_triggers=Triggers(discrepancy_rate=0.1))
    result = evaluate_checkpoints(inputs(flags=flags, since_shadow=report({"get": 40})))
    assert checkpoint(result, "discrepancy_rate")["verdict"] == "go"
    assert checkpoint(result, "discrepancy_rate")["threshold"] == 0.1


# error_rate_at_10


def at(read: float, write: float, triggers: Triggers | None = None) -> Flags:
    return Flags(use_new_storage=True, read_percentage=read, write_percentage=write, rollback_triggers=triggers)


def test_error_rate_go_at_ten_percent() -> None:
    """At 10 % with 200 calls of new, one failed (0.5 %): within 1 %, go."""
    figures = window(new={"get": calls(200, errors=1)}, old={"get": calls(1800)})
    result = evaluate_checkpoints(inputs(flags=at(10, 10), window=figures))
    rate = checkpoint(result, "error_rate_at_10")
    assert rate["verdict"] == "go"
    assert rate["measured"]["error_rate"] == 0.005
    assert rate["threshold"]["error_rate"] == 0.01


def test_error_rate_above_threshold_is_no_go() -> None:
    """10 failures in 200 calls of new (5 %) is above the 1 % threshold: no-go."""
    figures = window(new={"get": calls(200, errors=10)})
    assert verdict("error_rate_at_10", flags=at(10, 10), window=figures) == "no-go"


def test_error_rate_inconclusive_below_ten_percent() -> None:
    """With the write percentage still at 5, the 10 % checkpoint is not measured yet: inconclusive."""
    figures = window(new={"get": calls(200)})
    result = evaluate_checkpoints(inputs(flags=at(10, 5), window=figures))
    assert checkpoint(result, "error_rate_at_10")["verdict"] == "inconclusive"
    assert "not at 10 % yet" in checkpoint(result, "error_rate_at_10")["detail"]


def test_error_rate_inconclusive_with_too_few_calls() -> None:
    """Fewer than min_calls calls of new, even all failed, is inconclusive: never a pass, never a fail."""
    figures = window(new={"get": calls(99, errors=99)})
    assert verdict("error_rate_at_10", flags=at(10, 10), window=figures) == "inconclusive"


def test_error_rate_inconclusive_under_an_override() -> None:
    """While an override sends everything to old the window measures no step: inconclusive."""
    assert verdict("error_rate_at_10", overridden=True) == "inconclusive"


def test_error_rate_threshold_and_min_calls_come_from_the_flag_file() -> None:
    """rollback_triggers.error_rate 0.1 and min_calls 20: 4 failures in 40 calls is go."""
    flags = at(10, 10, Triggers(error_rate=0.1, min_calls=20))
    figures = window(new={"get": calls(40, errors=4)})
    assert verdict("error_rate_at_10", flags=flags, window=figures,
                   evaluation=evaluate(figures, flags.rollback_triggers or Triggers())) == "go"


# performance_at_50


def test_performance_go_within_twenty_percent() -> None:
    """At 50 %, new's p99 10 % above old's on every op: go, with the worst op and both throughputs."""
    figures = window(new={"get": calls(500, p99=0.0022), "set": calls(300, p99=0.003)},
                     old={"get": calls(500, p99=0.002), "set": calls(300, p99=0.003)})
    result = evaluate_checkpoints(inputs(window=figures))
    perf = checkpoint(result, "performance_at_50")
    assert perf["verdict"] == "go"
    assert perf["measured"]["worst_op"] == "get"
    assert perf["measured"]["increase"] == pytest.approx(0.10)
    assert perf["measured"]["new_throughput"] == pytest.approx(800 / 60)


def test_performance_no_go_when_one_op_is_much_slower() -> None:
    """One op whose p99 on new is 50 % above old's: no-go, naming it."""
    figures = window(new={"get": calls(500, p99=0.002), "set": calls(300, p99=0.0045)},
                     old={"get": calls(500, p99=0.002), "set": calls(300, p99=0.003)})
    result = evaluate_checkpoints(inputs(window=figures))
    perf = checkpoint(result, "performance_at_50")
    assert perf["verdict"] == "no-go"
    assert "worst set" in perf["detail"]


def test_performance_inconclusive_before_fifty_percent() -> None:
    """At 10 % the 50 % checkpoint is not measured yet, however good the figures."""
    assert verdict("performance_at_50", flags=at(10, 10)) == "inconclusive"


def test_performance_inconclusive_without_enough_calls_on_both_stores() -> None:
    """No op with min_calls calls on both stores (old ran only 20 gets): inconclusive."""
    figures = window(new={"get": calls(500, p99=0.01)}, old={"get": calls(20, p99=0.001)})
    assert verdict("performance_at_50", window=figures) == "inconclusive"


# readiness


def test_readiness_no_go_without_a_verify() -> None:
    """No verify on record: no-go, saying to run `turnout verify`."""
    result = evaluate_checkpoints(inputs(last_verify=None, last_verify_age_s=None))
    assert checkpoint(result, "readiness")["verdict"] == "no-go"
    assert "turnout verify" in checkpoint(result, "readiness")["detail"]


def test_readiness_no_go_on_a_verify_not_clean_or_too_old() -> None:
    """A verify that found differences, or one older than the cutover's gate allows: no-go."""
    assert verdict("readiness", last_verify={"clean": False, "missing": 3}) == "no-go"
    assert verdict("readiness", last_verify_age_s=MAX_VERIFY_AGE_S + 1) == "no-go"


def test_readiness_no_go_on_replication_lag_or_an_unhealthy_backend() -> None:
    """Replication beyond the cutover's gate, a failing backend or one whose health is unknown: no-go."""
    assert verdict("readiness", replication=QueueStats(MAX_REPLICATION_DEPTH + 1, 1.0, 0, 0, None)) == "no-go"
    assert verdict("readiness", replication=QueueStats(5, 61.0, 0, 0, None)) == "no-go"
    assert verdict("readiness", backends_healthy={"old": True, "new": False}) == "no-go"
    assert verdict("readiness", backends_healthy={"old": True}) == "no-go"


def test_readiness_follows_the_discrepancy_checkpoint() -> None:
    """Every gate passing but the discrepancy rate inconclusive: readiness is inconclusive, not go."""
    assert verdict("readiness", since_shadow=report({"get": 40})) == "inconclusive"
    assert verdict("readiness", since_shadow=report({"get": 1000}, {"get": 50})) == "no-go"


# rollback_possible


def test_rollback_possible_no_go_without_a_drill() -> None:
    """No rollback and resume since shadow mode began: no-go, saying what is missing."""
    result = evaluate_checkpoints(inputs(records=SafetyRecords(SHADOW_SINCE, (Event("rollback", NOW - 10),))))
    assert checkpoint(result, "rollback_possible")["verdict"] == "no-go"
    assert "no resume" in checkpoint(result, "rollback_possible")["detail"]


def test_rollback_drill_before_shadow_mode_does_not_count() -> None:
    """A rollback and resume from before shadow mode began are no drill of this migration."""
    before = SafetyRecords(SHADOW_SINCE, (Event("rollback", SHADOW_SINCE - 60), Event("resume", SHADOW_SINCE - 30)))
    assert verdict("rollback_possible", records=before) == "no-go"


def test_rollback_no_go_on_replication_lag_toward_old() -> None:
    """The oldest write pending toward old 6 s old (over 5 s): no-go, with the replayer's last error."""
    lagging = QueueStats(depth=40, oldest_age_s=6.0, replayed=10, failures=3, last_error="old: disk full")
    result = evaluate_checkpoints(inputs(replication=lagging))
    rollback = checkpoint(result, "rollback_possible")
    assert rollback["verdict"] == "no-go"
    assert "old: disk full" in rollback["detail"]
    assert rollback["measured"]["replication_age_s"] == 6.0


def test_rollback_no_go_when_old_is_unhealthy_or_unknown() -> None:
    """Rolling back onto an old store that fails, or whose health nobody knows, is not possible."""
    assert verdict("rollback_possible", backends_healthy={"old": False, "new": True}) == "no-go"
    assert verdict("rollback_possible", backends_healthy={"new": True}) == "no-go"
    assert verdict("rollback_possible", backends_healthy={"old": True, "new": False}) == "go"
