"""How a decision about routing reaches every process of the proxy: the guard's automatic rollback and
canary steps, and the operators' overrides, all through here.

A change is made at home first (persisted in state_dir by the flag watcher), then relayed to every
other worker of `turnout serve --workers N`. A worker that cannot be told is logged: the guard must
not stop at it (the override is in state_dir, so a worker restarted reads it), and the operators'
calls report it to their caller (proxy.admin.service).
"""

from __future__ import annotations

import logging
import time

from turnout.admin.v1 import admin_pb2

from proxy.admin.documents import canary_state
from proxy.admin.state import AdminState
from proxy.routing.router import Override
from proxy.safety.canary import CanaryState
from proxy.workers.relay import RELAY_TIMEOUT_S, Answer, failure, relay

log = logging.getLogger(__name__)


class ProxySteering:
    """The guard's Steering (proxy.safety.guard), for this process and the workers it speaks for."""

    def __init__(self, state: AdminState) -> None:
        self._state = state

    async def set_override(self, override: Override | None) -> list[Answer[admin_pb2.OverrideState]]:
        state = self._state
        state.watcher.set_override(override)
        if override is None:
            state.telemetry.event("turnout.override.cleared", {})
            request = None
        else:
            attributes = {"turnout.route": override.route.value, "turnout.override.reason": override.reason,
                          "turnout.override.automatic": override.automatic}
            state.telemetry.event("turnout.override", attributes)
            request = admin_pb2.SetOverrideRequest(route=override.route.value, reason=override.reason,
                                                   automatic=override.automatic)
            if override.trigger is not None:
                trip = override.trigger
                request.trigger.CopyFrom(admin_pb2.TriggerState(name=trip.name, measured=trip.measured,
                                                                threshold=trip.threshold, detail=trip.detail))
        others = state.other_workers()
        if not others:
            return []
        if request is None:
            clear = admin_pb2.ClearOverrideRequest()
            answers = await relay(others, lambda stub: stub.ClearOverride(clear, timeout=RELAY_TIMEOUT_S),
                                  state.admin_token)
        else:
            asked = request
            answers = await relay(others, lambda stub: stub.SetOverride(asked, timeout=RELAY_TIMEOUT_S),
                                  state.admin_token)
        if any(answer.error for answer in answers):
            log.error("%s", failure("the override", answers))
        return answers

    async def apply_canary(self, canary: CanaryState) -> None:
        state = self._state
        state.watcher.set_canary_step(canary.step)
        others = state.other_workers()
        if others:
            shown = canary_state(canary, state.watcher.file_flags.canary)
            request = admin_pb2.CanaryRequest(action="apply", state=shown)
            answers = await relay(others, lambda stub: stub.Canary(request, timeout=RELAY_TIMEOUT_S),
                                  state.admin_token)
            if any(answer.error for answer in answers):
                log.error("%s", failure(f"the canary's step {canary.step}", answers))

    def rolled_back(self, reason: str, ok: bool, automatic: bool, detail: str, incident: str,
                    trigger: str = "") -> None:
        self._state.record_rollback(admin_pb2.RollbackRecord(
            reason=reason, ok=ok, automatic=automatic, detail=detail, incident=incident, time_unix=time.time()),
            trigger)
