"""The guard: once per evaluation period it reads the proxy's counters, judges the health window, rolls
everything back to old when a trigger trips, and walks the canary.

It runs in one process of a proxy (a lone process, or worker 0 of `turnout serve --workers N`, which
reads every worker's counters), and acts only through Steering, which applies an override or a
canary step in every process. So the guard holds no routing state of its own: the override and the
canary's step are in state_dir, as the contract's fleet expects.

An automatic rollback is an override to old with `automatic: true` and the trigger that tripped; it
holds until `turnout resume`, and the window then starts again at the resume, so the figures that
tripped it cannot trip it a second time: it never flaps. While an override is in force no trigger is
judged (everything is on old already). The writes new took before the rollback are already on their
way to old through the durable replication queue, and reads follow each key's pending copy
(proxy.data.pending) until it lands, so no read misses an acknowledged write; the rollback's record
(span, status) says ok once the queue has drained.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from proxy import statedir
from proxy.background import BackgroundTask
from proxy.replication.queue import QueueStats
from proxy.routing.flags import Flags
from proxy.routing.router import Override, Route, Trip
from proxy.routing.safetyflags import Triggers, format_duration
from proxy.routing.watcher import FlagWatcher
from proxy.safety import canary, records
from proxy.safety.canary import CanaryState, Phase
from proxy.safety.history import History
from proxy.safety.hooks import Hooks
from proxy.safety.triggers import Evaluation, TriggerVerdict, evaluate
from proxy.safety.window import HealthWindow, Readings, WindowFigures

log = logging.getLogger(__name__)

#: How often the window is judged: a trigger acts within this long of its threshold being crossed.
EVALUATION_PERIOD_S = 1.0
#: How long the rollback's record waits for the writes new took to reach old.
ROLLBACK_DRAIN_S = 30.0


class Steering(Protocol):
    """How the guard's decisions reach every process of the proxy (proxy.admin.steering)."""

    async def set_override(self, override: Override | None) -> object:
        """Put the override in force in every process (None clears it)."""

    async def apply_canary(self, state: CanaryState) -> None:
        """Put the canary's step in force in every process."""

    def rolled_back(self, reason: str, ok: bool, automatic: bool, detail: str, incident: str,
                    trigger: str = "") -> None:
        """Record a rollback that happened: status, log, the `turnout.rollback` span, the metric
        (labelled by the trigger that tripped, or "canary_abort")."""


@dataclass(frozen=True, slots=True)
class Judgement:
    """The guard's last look: the window, its evaluation, when."""

    time: float
    figures: WindowFigures
    evaluation: Evaluation
    epoch: float  # the window starts no earlier than this (the guard's start, or the last resume)


class Guard:
    def __init__(self, watcher: FlagWatcher, readings: Callable[[], Awaitable[Readings]], steering: Steering,
                 state_dir: Path, hooks: Hooks, drain: Callable[[float], Awaitable[QueueStats]],
                 period: float = EVALUATION_PERIOD_S, clock: Callable[[], float] = time.time,
                 history: History | None = None) -> None:
        self._watcher = watcher
        self._readings = readings
        self._steering = steering
        self._state_dir = state_dir
        self._hooks = hooks
        self._drain = drain
        self.period = period
        self._clock = clock
        self._window = HealthWindow()
        #: The window's figures over time, for the dashboard.
        self.history = history or History()
        self._epoch = clock()
        self._overridden = watcher.override is not None
        self._shadow_noted = records.read(state_dir).shadow_since is not None
        self._canary: CanaryState | None = None
        self.last: Judgement | None = None
        self._task = BackgroundTask(self._run, "guard")
        self._background: set[asyncio.Task[None]] = set()
        self.failures = 0

    # -- running -------------------------------------------------------------------------------

    def restore_canary(self) -> None:
        """Before serving: put the canary's persisted step in force (it survives restarts)."""
        plan = self._watcher.file_flags.canary
        if plan is not None:
            self._canary = canary.load(self._state_dir, plan, self._clock())
            self._watcher.set_canary_step(self._canary.step)

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.evaluate_once()
            except Exception:  # a guard that died would never roll back again: count it, go on
                self.failures += 1
                log.exception("guard: an evaluation failed")

    # -- one evaluation ------------------------------------------------------------------------

    async def evaluate_once(self) -> Judgement:
        now = self._clock()
        flags = self._watcher.file_flags
        triggers = flags.rollback_triggers or Triggers()
        keep = max(triggers.window_s, self.history.interval_s) + 3 * self.period
        self._window.add(now, await self._readings(), keep)
        self.history.observe(now, self._window)
        override = self._watcher.override
        if self._overridden and override is None:
            await self._resumed(now)
        self._overridden = override is not None
        if flags.use_new_storage and flags.shadow_mode_enabled and not self._shadow_noted:
            records.note_shadow(self._state_dir, now)
            self._shadow_noted = True
        figures = self._window.figures(now, triggers.window_s, since=self._epoch)
        evaluation = evaluate(figures, triggers)
        self.last = Judgement(now, figures, evaluation, self._epoch)
        tripped = evaluation.tripped
        if override is None and flags.use_new_storage and flags.rollback_triggers is not None and tripped:
            await self._roll_back(now, tripped, self.last, flags)
        else:
            await self._walk_canary(now, flags, triggers, override)
        return self.last

    async def resuming(self) -> None:
        """Called by `turnout resume` before the override is cleared, so that a rolled-back canary is
        on its first step again before any call is routed by the flag file (not a second later, at
        the next evaluation)."""
        await self._resumed(self._clock())

    async def _resumed(self, now: float) -> None:
        """The override was cleared (`turnout resume`): judge only what comes after it."""
        self._epoch = now
        log.info("guard: the override was cleared; the health window starts again")
        if self._canary is not None and self._canary.phase is Phase.ROLLED_BACK:
            self._canary = canary.restarted(self._canary, now)
            canary.save(self._state_dir, self._canary)
            # The step it rolled back at is still in force in every process: put the first one back.
            await self._steering.apply_canary(self._canary)

    async def _roll_back(self, now: float, verdict: TriggerVerdict, judgement: Judgement, flags: Flags) -> None:
        measured = verdict.measured if verdict.measured is not None else 0.0
        trip = Trip(verdict.name, measured, verdict.threshold, verdict.detail)
        reason = (f"automatic rollback: {verdict.name} {measured:.4g} above its threshold {verdict.threshold:g} "
                  f"over {format_duration(judgement.evaluation.window_s)} ({verdict.detail})")
        await self._steering.set_override(Override(Route.OLD, reason, now, automatic=True, trigger=trip))
        self._overridden = True
        log.error("%s", reason)
        if self._canary is not None:
            self._canary = canary.rolled_back(self._canary, reason)
            canary.save(self._state_dir, self._canary)
        incident = self._incident(now, reason, trip, judgement, flags)
        records.note_event(self._state_dir, records.Event("rollback", now, automatic=True, reason=reason))
        event = {"automatic": True, "reason": reason, "trigger": _trip_document(trip), "incident": str(incident),
                 "window": judgement.figures.to_document()}
        self._hooks.fire_soon("rollback", event)
        self._keep(self._record_when_drained(reason, trip, incident))

    def _incident(self, now: float, reason: str, trip: Trip, judgement: Judgement, flags: Flags) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        path = statedir.incident_path(self._state_dir, stamp, "automatic-rollback")
        statedir.write_json(path, {
            "time": now, "action": "automatic rollback", "reason": reason, "trigger": _trip_document(trip),
            "window": judgement.figures.to_document(), "evaluation": judgement.evaluation.to_document(),
            "flags": flags.to_document(), "canary": None if self._canary is None else self._canary.to_document(),
        })
        return path

    async def _record_when_drained(self, reason: str, trip: Trip, incident: Path) -> None:
        """The rollback is whole once the writes new took have reached old: say so, or say what is left."""
        try:
            stats = await self._drain(ROLLBACK_DRAIN_S)
        except Exception as exc:
            ok, detail = False, f"draining the replication queue failed: {exc}"
        else:
            ok = stats.depth == 0
            detail = ("everything on old; the replication queue is drained" if ok else
                      f"everything on old; {stats.depth} writes new took are still to be copied to old "
                      f"(oldest {stats.oldest_age_s:.1f}s): {stats.last_error or 'still copying'}")
        self._steering.rolled_back(reason, ok, True, f"{trip.name}: {detail}", str(incident), trip.name)

    def _keep(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the canary ----------------------------------------------------------------------------

    async def _walk_canary(self, now: float, flags: Flags, triggers: Triggers, override: Override | None) -> None:
        plan = flags.canary
        if plan is None:
            if self._canary is not None:
                self._canary = None
                canary.forget(self._state_dir)
            return
        if self._canary is None or self._canary.steps != plan.steps:
            self._canary = canary.load(self._state_dir, plan, now)
            await self._steering.apply_canary(self._canary)
        state = self._canary
        if override is not None:
            if state.phase is not Phase.ROLLED_BACK:
                await self._set_canary(canary.rolled_back(state, f"an override is in force: {override.reason}"))
            return
        nxt = canary.waiting(state, plan, now)
        if nxt is None:
            figures = self._window.figures(now, triggers.window_s, since=max(self._epoch, state.since))
            nxt = canary.judged(state, evaluate(figures, triggers))
            if nxt is None:
                agreed, why = await self._hooks.confirm(self._canary_event(state, "confirm"))
                if not agreed:
                    nxt = replace(state, phase=Phase.HOLDING, reason=f"a confirm hook holds the step: {why}")
                else:
                    nxt = canary.advanced(state, now, f"step {state.step} ({state.percentage:g} %) held healthy "
                                                      f"for {format_duration(plan.interval_s)}")
        await self._set_canary(nxt)

    async def _set_canary(self, state: CanaryState) -> None:
        before = self._canary
        self._canary = state
        if before is None or before.durable() != state.durable():
            canary.save(self._state_dir, state)
        if before is None or before.step != state.step:
            await self._steering.apply_canary(state)
            log.warning("canary: step %d, %g %% of reads and writes to new (%s)", state.step, state.percentage,
                        state.reason)
        if before is not None and (before.step, before.phase) != (state.step, state.phase) \
                and state.phase in (Phase.ADVANCING, Phase.DONE) and before.phase is not Phase.ROLLED_BACK:
            self._hooks.fire_soon("canary_step", self._canary_event(state, "step"))

    def _canary_event(self, state: CanaryState, what: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"canary": state.to_document(), "what": what}
        if self.last is not None:
            doc["window"] = self.last.figures.to_document()
        return doc

    @property
    def canary(self) -> CanaryState | None:
        return self._canary

    async def operator(self, action: str, reason: str) -> CanaryState:
        """`turnout canary hold|promote|abort`; ValueError when there is no canary or no such action."""
        plan = self._watcher.file_flags.canary
        if plan is None:
            raise ValueError("the flag file has no canary")
        now = self._clock()
        if self._canary is None or self._canary.steps != plan.steps:
            self._canary = canary.load(self._state_dir, plan, now)
        state = self._canary
        if action == "hold":
            await self._set_canary(replace(state, operator_hold=True, phase=Phase.HOLDING,
                                           reason=f"held by an operator: {reason or 'no reason given'}"))
        elif action == "promote":
            if state.phase is Phase.ROLLED_BACK:
                raise ValueError("the canary was rolled back: `turnout resume` starts it again")
            await self._set_canary(canary.advanced(state, now,
                                                   f"promoted by an operator: {reason or 'no reason given'}"))
        elif action == "abort":
            why = (f"canary aborted by an operator at step {state.step} ({state.percentage:g} %): "
                   f"{reason or 'no reason given'}")
            await self._steering.set_override(Override(Route.OLD, why, now))
            self._overridden = True
            await self._set_canary(canary.rolled_back(state, why))
            records.note_event(self._state_dir, records.Event("rollback", now, automatic=False, reason=why))
            self._hooks.fire_soon("rollback", {"automatic": False, "reason": why,
                                               "canary": self._canary.to_document()})
            self._steering.rolled_back(why, True, False, "everything on old until `turnout resume`", "",
                                       "canary_abort")
        elif action:
            raise ValueError(f"no canary action {action!r}: hold, promote or abort")
        return self._canary

    # -- what status shows ---------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """The health window and the triggers' verdicts, for status, /status.json and the dashboard."""
        if self.last is None:
            return {"period_seconds": self.period, "evaluated_unix": 0.0, "failures": self.failures}
        return {"period_seconds": self.period, "evaluated_unix": self.last.time, "epoch_unix": self.last.epoch,
                "failures": self.failures, "window": self.last.figures.to_document(),
                "evaluation": self.last.evaluation.to_document()}


def _trip_document(trip: Trip) -> dict[str, Any]:
    return {"name": trip.name, "measured": trip.measured, "threshold": trip.threshold, "detail": trip.detail}
