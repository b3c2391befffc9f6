"""The canary's decisions (proxy.safety.canary): wait out a step's interval, hold on a window that is
not conclusive and healthy, advance, roll back, start again; and its state in a real state_dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.routing.safetyflags import CanaryPlan, Triggers
from proxy.safety import canary
from proxy.safety.canary import CanaryState, Phase
from proxy.safety.triggers import Evaluation, evaluate
from proxy.safety.window import CallFigures, WindowFigures
from proxy.statedir import CANARY_FILE

NOW = 1_800_000_000.0
PLAN = CanaryPlan(steps=(10.0, 50.0, 100.0), interval_s=60.0)
TRIGGERS = Triggers(error_rate=0.01, min_calls=100)


def evaluation(new_calls: int, errors: int = 0) -> Evaluation:
    new = CallFigures(calls=new_calls, errors=errors, p99=0.002, throughput=new_calls / 60)
    figures = WindowFigures(start=NOW - 60, end=NOW, pairs={("new", "get"): new}, backends={"new": new})
    return evaluate(figures, TRIGGERS)


def at_step(step: int, since: float = NOW - 61, phase: Phase = Phase.ADVANCING, reason: str = "",
            operator_hold: bool = False) -> CanaryState:
    return CanaryState(steps=PLAN.steps, step=step, since=since, phase=phase, reason=reason,
                       operator_hold=operator_hold)


# waiting ------------------------------------------------------------------------------------------------


def test_inside_its_interval_a_step_is_advancing_with_the_time_left() -> None:
    state = at_step(0, since=NOW - 20)
    waited = canary.waiting(state, PLAN, NOW)
    assert waited is not None
    assert waited.phase is Phase.ADVANCING
    assert waited.reason == "40s left of this step's interval"
    assert (waited.step, waited.since, waited.percentage) == (0, NOW - 20, 10.0)


def test_an_operator_hold_holds_even_inside_the_interval_and_after_it() -> None:
    for since in (NOW - 1, NOW - 3600):
        waited = canary.waiting(at_step(1, since=since, operator_hold=True), PLAN, NOW)
        assert waited is not None
        assert waited.phase is Phase.HOLDING
        assert "held by an operator" in waited.reason
        assert waited.step == 1


@pytest.mark.parametrize("phase", [Phase.DONE, Phase.ROLLED_BACK])
def test_done_and_rolled_back_stay_as_they_are(phase: Phase) -> None:
    state = at_step(2, since=NOW - 3600, phase=phase, reason="was so", operator_hold=True)
    assert canary.waiting(state, PLAN, NOW) == state


def test_once_the_interval_is_over_the_window_decides() -> None:
    assert canary.waiting(at_step(0, since=NOW - 60), PLAN, NOW) is None  # exactly the interval
    assert canary.waiting(at_step(0, since=NOW - 61), PLAN, NOW) is None


# judged -------------------------------------------------------------------------------------------------


def test_an_inconclusive_window_holds_the_step_saying_why() -> None:
    state = at_step(0)
    held = canary.judged(state, evaluation(new_calls=40))
    assert held is not None
    assert held.phase is Phase.HOLDING
    assert held.reason.startswith("inconclusive: 40 calls of new")
    assert (held.step, held.since) == (state.step, state.since)


def test_an_unhealthy_window_holds_the_step_saying_why() -> None:
    held = canary.judged(at_step(1), evaluation(new_calls=1000, errors=50))
    assert held is not None
    assert held.phase is Phase.HOLDING
    assert held.reason.startswith("error_rate tripped: 50 of 1000 calls of new failed")


def test_a_healthy_window_leaves_the_decision_to_the_confirm_hooks() -> None:
    assert canary.judged(at_step(1), evaluation(new_calls=1000)) is None


# advanced, rolled back, restarted ------------------------------------------------------------------------


def test_advancing_goes_to_the_next_step_from_now() -> None:
    state = at_step(0, since=NOW - 600, phase=Phase.HOLDING, reason="old reason", operator_hold=True)
    nxt = canary.advanced(state, NOW, "healthy for 60s")
    assert (nxt.step, nxt.percentage, nxt.phase, nxt.since) == (1, 50.0, Phase.ADVANCING, NOW)
    assert nxt.reason == "healthy for 60s"
    assert nxt.operator_hold is False  # a promote ends a hold
    # The new step waits out its own interval.
    assert canary.waiting(nxt, PLAN, NOW + 1) is not None
    assert canary.waiting(nxt, PLAN, NOW + 60) is None


def test_advancing_past_the_last_step_is_done_at_100() -> None:
    state = at_step(0, since=NOW)
    for t in (1, 2):
        state = canary.advanced(state, NOW + t, f"step {t}")
    assert (state.step, state.percentage, state.last, state.phase) == (2, 100.0, True, Phase.ADVANCING)
    done = canary.advanced(state, NOW + 3, "the last step held")
    assert done.phase is Phase.DONE
    assert (done.step, done.percentage) == (2, 100.0)
    assert done.since == NOW + 2  # when the last step began
    assert canary.waiting(done, PLAN, NOW + 10_000) == done


def test_a_rollback_marks_the_canary_rolled_back() -> None:
    rolled = canary.rolled_back(at_step(1, operator_hold=True), "error_rate 0.05 > 0.01")
    assert (rolled.phase, rolled.reason, rolled.step, rolled.operator_hold) == (
        Phase.ROLLED_BACK, "error_rate 0.05 > 0.01", 1, False)


def test_a_resume_starts_again_from_the_first_step() -> None:
    rolled = canary.rolled_back(at_step(2, since=NOW - 100), "tripped")
    again = canary.restarted(rolled, NOW)
    assert (again.step, again.percentage, again.phase, again.since, again.operator_hold) == (
        0, 10.0, Phase.ADVANCING, NOW, False)
    assert again.steps == PLAN.steps
    assert "first step" in again.reason


# load and save ------------------------------------------------------------------------------------------


def test_with_no_file_a_canary_starts_at_its_first_step(tmp_path: Path) -> None:
    state = canary.load(tmp_path, PLAN, NOW)
    assert (state.steps, state.step, state.phase, state.since) == (PLAN.steps, 0, Phase.ADVANCING, NOW)


def test_the_saved_step_survives_a_restart(tmp_path: Path) -> None:
    state = at_step(1, since=NOW - 5, phase=Phase.HOLDING, reason="inconclusive", operator_hold=True)
    canary.save(tmp_path, state)
    loaded = canary.load(tmp_path, PLAN, NOW + 100)
    assert loaded.durable() == state.durable()
    assert loaded == state
    assert (tmp_path / CANARY_FILE).stat().st_mode & 0o077 == 0  # the proxy's alone


def test_a_file_of_other_steps_is_a_canary_of_its_own(tmp_path: Path) -> None:
    canary.save(tmp_path, CanaryState(steps=(5.0, 100.0), step=1, since=NOW - 5, phase=Phase.DONE))
    state = canary.load(tmp_path, PLAN, NOW)
    assert (state.steps, state.step, state.phase, state.since) == (PLAN.steps, 0, Phase.ADVANCING, NOW)


@pytest.mark.parametrize("text", [
    "{not json",  # torn or garbled
    "\xff\xfe",  # not even text
    "[]",
    '"a string"',
    "null",
    "{}",
    '{"steps": [10, 50, 100], "step": "two", "state": "advancing", "since": 0}',
    '{"steps": [10, 50, 100], "step": 1, "state": "sideways", "since": 0}',
    '{"steps": [10, 50, 100], "step": 3, "state": "advancing", "since": 0}',  # past the last step
    '{"steps": [10, 50, 100], "step": -1, "state": "advancing", "since": 0}',  # would read as 100 %
    '{"steps": 10, "step": 0, "state": "advancing", "since": 0}',
    '{"steps": [10, 50, 100], "step": 0, "state": "advancing", "since": null}',
])
def test_an_unreadable_file_is_a_canary_that_starts_again(tmp_path: Path, text: str) -> None:
    (tmp_path / CANARY_FILE).write_bytes(text.encode("latin-1"))
    state = canary.load(tmp_path, PLAN, NOW)
    assert (state.steps, state.step, state.phase, state.since) == (PLAN.steps, 0, Phase.ADVANCING, NOW)


def test_forget_removes_the_file(tmp_path: Path) -> None:
    canary.save(tmp_path, at_step(2))
    canary.forget(tmp_path)
    assert not (tmp_path / CANARY_FILE).exists()
    assert canary.load(tmp_path, PLAN, NOW).step == 0


_states = st.builds(
    CanaryState, steps=st.just(PLAN.steps), step=st.integers(0, 2), phase=st.sampled_from(list(Phase)),
    since=st.floats(min_value=0, max_value=4e9), reason=st.text(max_size=30), operator_hold=st.booleans())


@settings(max_examples=100, deadline=None)
@given(_states)
def test_a_state_round_trips_through_its_document(state: CanaryState) -> None:
    doc = json.loads(json.dumps(state.to_document()))
    assert doc["percentage"] == state.percentage
    assert doc["state"] == state.phase.value
    assert CanaryState.from_document(doc) == state
