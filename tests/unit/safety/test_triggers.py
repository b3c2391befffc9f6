"""The plan's rollback triggers judged over a health window (proxy.safety.triggers): ok, tripped or
inconclusive, with min_calls making a window with too little of new's traffic judge nothing."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.data.discrepancies import Report
from proxy.routing.safetyflags import Triggers
from proxy.safety.counters import Counters
from proxy.safety.triggers import Evaluation, Verdict, evaluate
from proxy.safety.wilson import wilson
from proxy.safety.window import CallFigures, HealthWindow, WindowFigures
from proxy.telemetry.metrics import Metrics

NOW = 1_800_000_000.0
ALL = Triggers(error_rate=0.01, latency_increase=0.20, discrepancy_rate=0.0001, min_calls=100)


def calls(n: int, errors: int = 0, p99: float = 0.002) -> CallFigures:
    return CallFigures(calls=n, errors=errors, p50=p99 / 2, p95=p99 * 0.9, p99=p99, throughput=n / 60.0)


def window(new: Mapping[str, CallFigures] | None = None, old: Mapping[str, CallFigures] | None = None,
           compared: int = 0, discrepancies: int = 0) -> WindowFigures:
    """A 60 s window with these figures per operation; a backend's totals summed from its operations."""
    pairs = {**{("new", op): f for op, f in (new or {}).items()}, **{("old", op): f for op, f in (old or {}).items()}}
    backends = {}
    for backend, ops in (("new", new or {}), ("old", old or {})):
        if ops:
            backends[backend] = calls(sum(f.calls for f in ops.values()), sum(f.errors for f in ops.values()),
                                      max(f.p99 for f in ops.values()))
    return WindowFigures(start=NOW - 60, end=NOW, pairs=pairs, backends=backends, compared=compared,
                         discrepancies=discrepancies)


def verdict_of(evaluation: Evaluation, name: str) -> Verdict:
    (found,) = [v for v in evaluation.verdicts if v.name == name]
    return found.verdict


# min_calls ----------------------------------------------------------------------------------------------


def test_fewer_than_min_calls_of_new_is_inconclusive_whatever_the_figures() -> None:
    """99 calls of new, all failed, ten times slower, every comparison a discrepancy: nothing is judged."""
    figures = window(new={"get": calls(99, errors=99, p99=0.5)}, old={"get": calls(10_000, p99=0.001)},
                     compared=10_000, discrepancies=10_000)
    evaluation = evaluate(figures, ALL)
    assert evaluation.conclusive is False
    assert (evaluation.new_calls, evaluation.min_calls) == (99, 100)
    assert [v.verdict for v in evaluation.verdicts] == [Verdict.INCONCLUSIVE] * 3
    assert evaluation.tripped is None
    assert evaluation.healthy is False
    assert "99 calls of new" in evaluation.why_not_healthy()
    assert "min_calls 100" in evaluation.why_not_healthy()


def test_an_empty_window_is_inconclusive_and_measures_nothing() -> None:
    evaluation = evaluate(window(), ALL)
    assert not evaluation.conclusive
    assert not evaluation.healthy
    assert all(v.measured is None for v in evaluation.verdicts)


def test_only_armed_triggers_are_judged() -> None:
    evaluation = evaluate(window(new={"get": calls(500)}), Triggers(error_rate=0.01))
    assert [v.name for v in evaluation.verdicts] == ["error_rate"]


@pytest.mark.parametrize("new_calls", [0, 99, 100, 10_000])
def test_with_nothing_armed_the_window_is_healthy_exactly_when_conclusive(new_calls: int) -> None:
    new = {"get": calls(new_calls, errors=new_calls)} if new_calls else None
    evaluation = evaluate(window(new=new), Triggers(min_calls=100))
    assert evaluation.verdicts == ()
    assert evaluation.conclusive is (new_calls >= 100)
    assert evaluation.healthy is evaluation.conclusive


# error_rate ---------------------------------------------------------------------------------------------


def test_an_error_rate_above_the_threshold_trips_with_measured_and_threshold() -> None:
    evaluation = evaluate(window(new={"get": calls(800, errors=10), "set": calls(200, errors=5)}), ALL)
    tripped = evaluation.tripped
    assert tripped is not None
    assert tripped.name == "error_rate"
    assert tripped.measured == pytest.approx(0.015)
    assert tripped.threshold == 0.01
    assert "15 of 1000 calls of new failed" in tripped.detail
    assert not evaluation.healthy
    doc = tripped.to_document()
    assert (doc["name"], doc["verdict"], doc["threshold"]) == ("error_rate", "tripped", 0.01)
    assert doc["measured"] == pytest.approx(0.015)


@pytest.mark.parametrize("errors", [0, 5, 10])
def test_an_error_rate_at_or_below_the_threshold_is_ok(errors: int) -> None:
    evaluation = evaluate(window(new={"get": calls(1000, errors=errors)}), Triggers(error_rate=0.01))
    assert verdict_of(evaluation, "error_rate") is Verdict.OK
    assert evaluation.healthy


def test_old_s_errors_do_not_count_against_new() -> None:
    evaluation = evaluate(window(new={"get": calls(1000)}, old={"get": calls(1000, errors=1000)}),
                          Triggers(error_rate=0.01))
    assert verdict_of(evaluation, "error_rate") is Verdict.OK


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=100, max_value=100_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
       st.floats(min_value=0.0, max_value=1.0))
def test_the_error_rate_trips_exactly_when_the_rate_exceeds_its_threshold(counts: tuple[int, int],
                                                                          threshold: float) -> None:
    errors, n = counts
    evaluation = evaluate(window(new={"get": calls(n, errors=errors)}), Triggers(error_rate=threshold))
    expected = Verdict.TRIPPED if errors / n > threshold else Verdict.OK
    assert verdict_of(evaluation, "error_rate") is expected


# latency_increase ---------------------------------------------------------------------------------------


def test_new_s_p99_more_than_the_threshold_above_old_s_trips_on_the_worst_operation() -> None:
    figures = window(new={"get": calls(500, p99=0.0022), "set": calls(500, p99=0.0035)},
                     old={"get": calls(500, p99=0.002), "set": calls(500, p99=0.002)})
    evaluation = evaluate(figures, Triggers(latency_increase=0.20))
    tripped = evaluation.tripped
    assert tripped is not None
    assert tripped.name == "latency_increase"
    assert tripped.measured == pytest.approx(0.75)  # set: 3.5 ms over 2 ms
    assert tripped.threshold == 0.20
    assert tripped.detail.startswith("set:")


def test_a_latency_increase_within_the_threshold_is_ok() -> None:
    figures = window(new={"get": calls(500, p99=0.0024), "set": calls(500, p99=0.001)},
                     old={"get": calls(500, p99=0.002), "set": calls(500, p99=0.002)})
    evaluation = evaluate(figures, Triggers(latency_increase=0.20))
    assert verdict_of(evaluation, "latency_increase") is Verdict.OK
    assert evaluation.verdicts[0].measured == pytest.approx(0.20)
    assert evaluation.healthy


def test_an_operation_with_too_few_calls_on_either_side_is_not_compared() -> None:
    """get has too few calls of old, set too few of new: no operation to judge, so inconclusive,
    even though new as a whole ran plenty."""
    figures = window(new={"get": calls(500, p99=1.0), "set": calls(50, p99=1.0)},
                     old={"get": calls(99, p99=0.001), "set": calls(500, p99=0.001)})
    evaluation = evaluate(figures, Triggers(latency_increase=0.20, min_calls=100))
    assert evaluation.conclusive
    verdict = evaluation.verdicts[0]
    assert verdict.verdict is Verdict.INCONCLUSIVE
    assert verdict.measured is None
    assert "no operation both stores ran at least 100 times" in verdict.detail
    assert evaluation.tripped is None
    assert not evaluation.healthy


def test_an_operation_old_did_not_run_is_not_compared_but_one_it_did_is() -> None:
    figures = window(new={"get": calls(500, p99=0.002), "keys": calls(500, p99=5.0)},
                     old={"get": calls(500, p99=0.002)})
    evaluation = evaluate(figures, Triggers(latency_increase=0.20))
    assert verdict_of(evaluation, "latency_increase") is Verdict.OK
    assert evaluation.verdicts[0].measured == pytest.approx(0.0)


# discrepancy_rate ---------------------------------------------------------------------------------------


def discrepancy_verdict(compared: int, discrepancies: int, threshold: float = 0.0001) -> Evaluation:
    return evaluate(window(new={"get": calls(1000)}, compared=compared, discrepancies=discrepancies),
                    Triggers(discrepancy_rate=threshold))


def test_none_of_40_compared_is_no_evidence_either_way() -> None:
    evaluation = discrepancy_verdict(40, 0)
    verdict = evaluation.verdicts[0]
    assert verdict.verdict is Verdict.INCONCLUSIVE
    assert verdict.measured == 0.0  # the point rate, shown beside its bound
    assert verdict.bound_low == 0.0
    assert verdict.bound_high == pytest.approx(0.0876, abs=1e-4)
    assert evaluation.tripped is None  # rolls nothing back ...
    assert not evaluation.healthy  # ... and passes no gate
    assert "discrepancy_rate inconclusive: 0 discrepancies in 40 compared" in evaluation.why_not_healthy()
    doc = verdict.to_document()
    assert doc["bound_high"] == verdict.bound_high
    assert doc["bound_low"] == 0.0


def test_none_of_50000_compared_is_ok() -> None:
    evaluation = discrepancy_verdict(50_000, 0)
    verdict = evaluation.verdicts[0]
    assert verdict.verdict is Verdict.OK
    assert verdict.bound_high is not None
    assert verdict.bound_high < 0.0001
    assert evaluation.healthy


def test_5_of_1000_trips_on_its_lower_bound() -> None:
    evaluation = discrepancy_verdict(1000, 5)
    verdict = evaluation.tripped
    assert verdict is not None
    assert verdict.name == "discrepancy_rate"
    assert verdict.measured == pytest.approx(0.005)
    assert verdict.bound_low is not None
    assert verdict.bound_low > 0.0001
    assert verdict.bound_low == wilson(5, 1000).low


def test_nothing_compared_is_inconclusive() -> None:
    verdict = discrepancy_verdict(0, 0).verdicts[0]
    assert verdict.verdict is Verdict.INCONCLUSIVE
    assert verdict.measured is None


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=10**6).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
       st.floats(min_value=1e-6, max_value=0.5))
def test_the_discrepancy_verdict_follows_the_interval_not_the_point_rate(counts: tuple[int, int],
                                                                         threshold: float) -> None:
    discrepancies, compared = counts
    verdict = discrepancy_verdict(compared, discrepancies, threshold).verdicts[0].verdict
    interval = wilson(discrepancies, compared)
    if interval.low > threshold:
        assert verdict is Verdict.TRIPPED
    elif interval.high <= threshold:
        assert verdict is Verdict.OK
    else:
        assert verdict is Verdict.INCONCLUSIVE
    # Never tripped while the point rate is at or below the threshold, never ok while above it.
    assert not (verdict is Verdict.TRIPPED and discrepancies / compared <= threshold)
    assert not (verdict is Verdict.OK and discrepancies / compared > threshold)


# From real metrics --------------------------------------------------------------------------------------


def test_a_window_of_real_metrics_trips_new_s_error_rate() -> None:
    """Counters read from the hot path's recorders, through the window, into the triggers."""
    metrics, report, window_ = Metrics(), Report(), HealthWindow()
    for t in range(61):
        for i in range(5):
            metrics.backend_call("new", "get", 0.001, failed=t > 30 and i == 0)  # 20 % failing after t=30
            metrics.backend_call("old", "get", 0.001, failed=False)
        report.compared["get"] += 5
        window_.add(NOW + t, {"0": Counters.read(metrics, report, NOW)}, 60.0)
    triggers = Triggers(error_rate=0.01, latency_increase=0.20, window_s=60.0, min_calls=100)

    evaluation = evaluate(window_.figures(NOW + 60, triggers.window_s), triggers)

    assert evaluation.conclusive
    assert evaluation.new_calls == 300
    tripped = evaluation.tripped
    assert tripped is not None
    assert tripped.name == "error_rate"
    assert tripped.measured == pytest.approx(30 / 300)
    assert verdict_of(evaluation, "latency_increase") is Verdict.OK  # the same latencies on both sides
    assert "error_rate tripped: 30 of 300 calls of new failed over 60s" in evaluation.why_not_healthy()
    doc = evaluation.to_document()
    assert (doc["conclusive"], doc["healthy"], doc["window_seconds"]) == (True, False, 60.0)
    assert [t["verdict"] for t in doc["triggers"]] == ["tripped", "ok"]


def test_a_window_of_real_metrics_cut_at_a_resume_no_longer_trips() -> None:
    metrics, report, window_ = Metrics(), Report(), HealthWindow()
    for t in range(61):
        for _ in range(5):
            metrics.backend_call("new", "get", 0.001, failed=t < 30)  # failing before the resume at t=30
        window_.add(NOW + t, {"0": Counters.read(metrics, report, NOW)}, 60.0)
    triggers = Triggers(error_rate=0.01, min_calls=100)
    assert evaluate(window_.figures(NOW + 60, 60.0), triggers).tripped is not None
    since_resume = evaluate(window_.figures(NOW + 60, 60.0, since=NOW + 30), triggers)
    assert since_resume.healthy
    assert since_resume.new_calls == 150
