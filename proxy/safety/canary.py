"""The canary: the read and write percentage walked up through the flag file's `canary.steps`.

A step advances once it has been in force for `interval` and the health window since it began is
conclusive and healthy (every armed trigger ok) and every `confirm` hook agrees; otherwise it holds,
saying why. An operator may hold it (`turnout canary hold`, until `promote`), promote it to its next
step at once, or abort it. A trip of a rollback trigger rolls it back; `turnout resume` then starts it
again from its first step, since whatever tripped has to prove itself again from the smallest share.

The state lives in state_dir (CANARY_FILE), so the step survives a restart; it belongs to one list
of steps: a flag file with other steps starts a canary of its own, from its first step. The
percentage in force is applied by the flag watcher (`set_canary_step`); this module only decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from proxy import statedir
from proxy.routing.safetyflags import CanaryPlan
from proxy.safety.triggers import Evaluation
from proxy.statedir import CANARY_FILE


class Phase(enum.StrEnum):
    ADVANCING = "advancing"  # in force, waiting out its interval (or about to advance)
    HOLDING = "holding"  # its interval is over but it may not advance: the reason says why
    DONE = "done"  # the last step held healthy for its interval
    ROLLED_BACK = "rolled_back"  # a trigger tripped (or an operator aborted): everything on old


@dataclass(frozen=True, slots=True)
class CanaryState:
    steps: tuple[float, ...]
    step: int = 0
    phase: Phase = Phase.ADVANCING
    since: float = 0.0  # unix time the step began
    reason: str = ""
    operator_hold: bool = False

    @property
    def percentage(self) -> float:
        return self.steps[min(self.step, len(self.steps) - 1)]

    @property
    def last(self) -> bool:
        return self.step >= len(self.steps) - 1

    def to_document(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "step": self.step, "percentage": self.percentage,
                "state": self.phase.value, "since": self.since, "reason": self.reason,
                "operator_hold": self.operator_hold}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> CanaryState:
        return cls(steps=tuple(float(s) for s in doc["steps"]), step=int(doc["step"]), phase=Phase(doc["state"]),
                   since=float(doc["since"]), reason=str(doc.get("reason", "")),
                   operator_hold=bool(doc.get("operator_hold", False)))

    def durable(self) -> tuple[Any, ...]:
        """What must survive a restart (the reason is worked out again)."""
        return self.steps, self.step, self.phase, self.since, self.operator_hold


def load(state_dir: Path, plan: CanaryPlan, now: float) -> CanaryState:
    """The canary of plan as state_dir has it, or a new one at its first step."""
    try:
        # Reading is inside the try too: a torn or garbled file (not JSON) is a ValueError there.
        doc = statedir.read_json(state_dir / CANARY_FILE)
        state = None if doc is None else CanaryState.from_document(doc)
    except (KeyError, TypeError, ValueError):
        state = None  # an unreadable file is a canary that starts again, not a proxy that cannot
    # A negative step would index the steps from the end (the last, largest percentage).
    if state is not None and state.steps == plan.steps and 0 <= state.step < len(plan.steps):
        return state
    return CanaryState(steps=plan.steps, since=now)


def save(state_dir: Path, state: CanaryState) -> None:
    statedir.write_json(state_dir / CANARY_FILE, state.to_document())


def forget(state_dir: Path) -> None:
    statedir.remove(state_dir / CANARY_FILE)


def waiting(state: CanaryState, plan: CanaryPlan, now: float) -> CanaryState | None:
    """The state while the step cannot advance yet (done, rolled back, held by an operator, or inside
    its interval); None when its interval is over and the health window decides."""
    if state.phase in (Phase.DONE, Phase.ROLLED_BACK):
        return state
    if state.operator_hold:
        return replace(state, phase=Phase.HOLDING, reason="held by an operator: `turnout canary promote` goes on")
    left = state.since + plan.interval_s - now
    if left > 0:
        return replace(state, phase=Phase.ADVANCING, reason=f"{left:.0f}s left of this step's interval")
    return None


def judged(state: CanaryState, evaluation: Evaluation) -> CanaryState | None:
    """Holding, with the reason, when the window since the step began is not conclusive and healthy;
    None when it is (the confirm hooks have the last word)."""
    if evaluation.healthy:
        return None
    return replace(state, phase=Phase.HOLDING, reason=evaluation.why_not_healthy())


def advanced(state: CanaryState, now: float, reason: str) -> CanaryState:
    """The next step (or done, after the last), beginning now."""
    if state.last:
        return replace(state, phase=Phase.DONE, reason=reason, operator_hold=False)
    return replace(state, step=state.step + 1, phase=Phase.ADVANCING, since=now, reason=reason, operator_hold=False)


def rolled_back(state: CanaryState, reason: str) -> CanaryState:
    return replace(state, phase=Phase.ROLLED_BACK, reason=reason, operator_hold=False)


def restarted(state: CanaryState, now: float) -> CanaryState:
    """After `turnout resume`: from the first step again."""
    return CanaryState(steps=state.steps, since=now, reason="resumed: from the first step again")
