"""The operators' API (proto turnout.admin.v1), served on `admin.listen`, never on the data port.

With `turnout serve --workers N`, worker 0 answers for the whole proxy: the changes it is asked for
(override, write pause, drain) it makes at home and then on every other worker, and its Status
covers them all (proxy.workers.relay). Migrate, Verify and the rollback record stay in worker 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy.admin.auth import RequireToken
from proxy.admin.documents import canary_state, message_document, override_state, pause_state, replication_state
from proxy.admin.jobs import migrate_updates, verify_updates
from proxy.admin.safety import checkpoint_report, local_counters
from proxy.admin.state import AdminState
from proxy.admin.status import proxy_status
from proxy.admin.steering import ProxySteering
from proxy.config import Limits
from proxy.data.plane import DataPlane
from proxy.migration.stores import Stores
from proxy.routing.router import Op, Override, Route, Trip, explain
from proxy.safety import records
from proxy.workers.relay import (
    RELAY_TIMEOUT_S,
    Answer,
    Peer,
    failure,
    holds_on,
    merge_pause,
    merge_replication,
    relay,
)

if TYPE_CHECKING:
    from turnout.admin.v1.admin_pb2_grpc import AdminAsyncStub

log = logging.getLogger(__name__)
T = TypeVar("T")


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, state: AdminState) -> None:
        self._state = state
        self._steering = ProxySteering(state)

    async def Status(self, request: admin_pb2.StatusRequest, context: Any) -> admin_pb2.StatusResponse:
        return await proxy_status(self._state, request.records)

    async def SetOverride(self, request: admin_pb2.SetOverrideRequest, context: Any) -> admin_pb2.OverrideState:
        try:
            route = Route(request.route or "old")
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"route: must be old or new, got {request.route!r}")
        trip = request.trigger if request.HasField("trigger") else None
        trigger = None if trip is None else Trip(trip.name, trip.measured, trip.threshold, trip.detail)
        override = Override(route=route, reason=request.reason or "operator override", since=time.time(),
                            automatic=request.automatic, trigger=trigger)
        log.warning("override: everything to %s (%s)", route.value, override.reason)
        answers = await self._steering.set_override(override)
        await self._abort_unless_all(context, "the override to " + route.value, answers)
        return override_state(override)

    async def ClearOverride(self, request: admin_pb2.ClearOverrideRequest, context: Any) -> admin_pb2.OverrideState:
        had = self._state.watcher.override
        log.warning("override cleared: the flag file decides again")
        if had is not None and self._state.guard is not None:
            await self._state.guard.resuming()
        answers = await self._steering.set_override(None)
        if had is not None and self._state.worker == 0:  # the one the operator asked, not a relayed copy
            now = time.time()
            records.note_event(self._state.state_dir, records.Event("resume", now, reason=had.reason))
            self._state.hooks.fire_soon("resume", {"override": message_document(override_state(had))})
        await self._abort_unless_all(context, "clearing the override", answers)
        return override_state(None)

    async def _abort_unless_all(self, context: Any, what: str, answers: Sequence[Answer[Any]]) -> None:
        """UNAVAILABLE, naming the workers, when some did not take a relayed change."""
        if any(answer.error for answer in answers):
            message = f"{failure(what, answers)}; {holds_on(answers, self._state.worker)}"
            log.error("%s", message)
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)

    async def Route(self, request: admin_pb2.RouteRequest, context: Any) -> admin_pb2.RouteResponse:
        try:
            op = Op(request.op or "get")
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"op: must be one of {', '.join(Op)}")
        return admin_pb2.RouteResponse(**explain(self._state.watcher.router, op, request.key, request.user or None))

    async def _relay(self, context: Any, what: str,
                     call: Callable[[AdminAsyncStub], Awaitable[T]]) -> list[tuple[int, T]]:
        """Make the same call on every other worker (worker 0 only); UNAVAILABLE, naming them, when
        some did not take it."""
        others = self._state.other_workers()
        if not others:
            return []
        answers = await relay(others, call, self._state.admin_token)
        if any(answer.error for answer in answers):
            message = f"{failure(what, answers)}; {holds_on(answers, self._state.worker)}"
            log.error("%s", message)
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)
        return [(answer.peer.index, answer.reply) for answer in answers if answer.reply is not None]

    def _plane(self) -> DataPlane:
        if self._state.plane is None:
            raise RuntimeError("the backends are not open yet")
        return self._state.plane

    def _stores(self) -> Stores:
        plane = self._plane()
        backends = plane.backends()
        return Stores(backends[Route.OLD], backends[Route.NEW], self._state.watcher.router, plane.live())

    async def PauseWrites(self, request: admin_pb2.PauseWritesRequest, context: Any) -> admin_pb2.PauseState:
        plane = self._plane()
        if not (math.isfinite(request.lease_seconds) and request.lease_seconds >= 0):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"lease_seconds: must be 0 (no lease) or more seconds, got {request.lease_seconds}")
        local = self._pause(plane, request)
        others = self._state.other_workers()
        if not others:
            return local
        answers = await relay(others, lambda stub: stub.PauseWrites(request, timeout=RELAY_TIMEOUT_S),
                              self._state.admin_token)
        if any(answer.error for answer in answers):
            what = ("renewing the write pause" if request.renew
                    else f"{'pausing' if request.paused else 'resuming'} writes")
            message = failure(what, answers)
            if request.paused and not request.renew:
                # A pause in part of the proxy is no pause, and its caller hears it failed and may
                # never resume: undo it everywhere, on the failed workers too (it may have landed),
                # to the end even if the caller stops waiting.
                await asyncio.shield(self._undo_pause(plane, others, message))
                message += "; the pause was undone: writes flow on every worker that answers"
            else:
                message += f"; {holds_on(answers, self._state.worker)}"
            log.error("%s", message)
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)
        return merge_pause([local] + [answer.reply for answer in answers if answer.reply is not None])

    async def _undo_pause(self, plane: DataPlane, others: Sequence[Peer], why: str) -> None:
        resume = admin_pb2.PauseWritesRequest(paused=False, reason=f"pause undone: {why}")
        self._pause(plane, resume)
        for answer in await relay(others, lambda stub: stub.PauseWrites(resume, timeout=RELAY_TIMEOUT_S),
                                  self._state.admin_token):
            if answer.error:
                log.error("undoing the write pause on worker %d at %s failed: %s",
                          answer.peer.index, answer.peer.address, answer.error)

    def _pause(self, plane: DataPlane, request: admin_pb2.PauseWritesRequest) -> admin_pb2.PauseState:
        """PauseWrites in this process alone."""
        if request.renew:
            return pause_state(plane.renew_pause(request.lease_seconds))
        if request.paused:
            return pause_state(plane.pause_writes(request.reason, request.lease_seconds))
        return pause_state(plane.resume_writes(request.reason))

    async def Drain(self, request: admin_pb2.DrainRequest, context: Any) -> admin_pb2.ReplicationState:
        plane = self._plane()
        timeout = request.timeout_seconds or 30.0
        # Every worker drains at once, so the whole proxy takes as long as the slowest, not their sum.
        stats, others = await asyncio.gather(plane.drain(timeout), self._relay(
            context, "draining replication",
            lambda stub: stub.Drain(request, timeout=timeout + RELAY_TIMEOUT_S)))
        local = replication_state(stats)
        if not others:
            return local
        return merge_replication([(self._state.worker, local), *others])

    async def Migrate(self, request: admin_pb2.MigrateRequest, context: Any) -> AsyncIterator[admin_pb2.JobUpdate]:
        async for update in migrate_updates(self._stores(), self._state.state_dir, request, context):
            yield update

    async def Verify(self, request: admin_pb2.VerifyRequest, context: Any) -> AsyncIterator[admin_pb2.JobUpdate]:
        async for update in verify_updates(self._stores(), self._state.state_dir, request):
            yield update

    async def RecordRollback(self, request: admin_pb2.RollbackRecord, context: Any) -> admin_pb2.RollbackRecord:
        record = admin_pb2.RollbackRecord()
        record.CopyFrom(request)
        record.time_unix = time.time()
        self._state.record_rollback(record)
        records.note_event(self._state.state_dir, records.Event("rollback", record.time_unix,
                                                                automatic=record.automatic, reason=record.reason))
        self._state.hooks.fire_soon("rollback", {"automatic": record.automatic, "reason": record.reason,
                                                 "ok": record.ok, "detail": record.detail,
                                                 "incident": record.incident})
        # Not relayed: worker 0's status speaks for the proxy, and one rollback is one span.
        return record

    async def Checkpoint(self, request: admin_pb2.CheckpointRequest, context: Any) -> admin_pb2.CheckpointReport:
        report = await checkpoint_report(self._state)
        if report is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "the checkpoints are judged by worker 0 once the backends are open")
        assert report is not None  # abort raised
        return admin_pb2.CheckpointReport(go=bool(report["go"]), report_json=json.dumps(report))

    async def Canary(self, request: admin_pb2.CanaryRequest, context: Any) -> admin_pb2.CanaryState:
        state = self._state
        if request.action == "apply":  # worker 0 telling this worker the step in force
            state.watcher.set_canary_step(request.state.step)
            return request.state
        guard = state.guard
        if guard is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the canary is walked by worker 0 once serving")
        assert guard is not None  # abort raised
        plan = state.watcher.file_flags.canary
        if not request.action:
            return canary_state(guard.canary, plan)
        try:
            canary = await guard.operator(request.action, request.reason)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log.warning("canary %s by an operator: step %d, %s", request.action, canary.step, canary.reason)
        return canary_state(canary, plan)

    async def Counters(self, request: admin_pb2.CountersRequest, context: Any) -> admin_pb2.CountersReply:
        counters = local_counters(self._state)
        return admin_pb2.CountersReply(counters_json="" if counters is None else json.dumps(counters.to_document()))


def build_admin_server(state: AdminState, limits: Limits | None = None) -> grpc.aio.Server:
    """The admin gRPC server, not yet listening (the caller adds admin.listen's port).

    SO_REUSEPORT off: a second proxy given the same admin.listen must fail to start, not share the
    port and answer for the first one half the time. At most limits.admin_max_connections at once,
    so operators' connections never take the data port's descriptors.
    """
    limits = limits or Limits()
    interceptors = [] if state.admin_token is None else [RequireToken(state.admin_token)]
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_allowed_incoming_connections", limits.admin_max_connections),
        ("grpc.max_connection_idle_ms", round(limits.idle_timeout_s * 1000)),
    ]
    server = grpc.aio.server(options=options, interceptors=interceptors)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(state), server)
    return server
