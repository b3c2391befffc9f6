"""The operators' API (proto turnout.admin.v1), served on `admin.listen`, never on the data port."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import grpc
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy import __version__
from proxy.dispatcher import Dispatcher
from proxy.flagwatch import FlagWatcher
from proxy.router import Op, Override, Route, bucket


@dataclass
class AdminState:
    """What the admin API reads and steers; the dispatcher is None until the backends are open."""

    watcher: FlagWatcher
    dispatcher: Dispatcher | None
    started: float


def override_state(override: Override | None) -> admin_pb2.OverrideState:
    if override is None:
        return admin_pb2.OverrideState(active=False)
    return admin_pb2.OverrideState(active=True, route=override.route.value, reason=override.reason,
                                   since_unix=override.since)


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, state: AdminState) -> None:
        self._state = state

    async def Status(self, request: admin_pb2.StatusRequest, context: Any) -> admin_pb2.StatusResponse:
        watcher = self._state.watcher
        reload = watcher.status()
        response = admin_pb2.StatusResponse(
            version=__version__,
            flags_json=json.dumps(watcher.router.flags.to_document()),
            reload=admin_pb2.ReloadState(
                path=reload.path, revision=reload.revision, last_attempt_unix=reload.last_attempt,
                last_success_unix=reload.last_success, failures=reload.failures, last_error=reload.last_error,
            ),
            override=override_state(watcher.override),
            started_unix=self._state.started,
        )
        dispatcher = self._state.dispatcher
        if dispatcher is not None:
            stats = dispatcher.queue.stats()
            response.replication.CopyFrom(admin_pb2.ReplicationState(
                depth=stats.depth, oldest_age_seconds=stats.oldest_age_s, replayed=stats.replayed,
                failures=stats.failures, last_error=stats.last_error or "",
            ))
            for route, backend in dispatcher.backends.items():
                health = dispatcher.health[route]
                response.backends.append(admin_pb2.BackendState(
                    name=route.value, type=backend.type_name, healthy=health.healthy, error=health.last_error,
                ))
        return response

    async def SetOverride(self, request: admin_pb2.SetOverrideRequest, context: Any) -> admin_pb2.OverrideState:
        try:
            route = Route(request.route or "old")
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"route: must be old or new, got {request.route!r}")
        override = Override(route=route, reason=request.reason or "operator override", since=time.time())
        self._state.watcher.set_override(override)
        return override_state(override)

    async def ClearOverride(self, request: admin_pb2.ClearOverrideRequest, context: Any) -> admin_pb2.OverrideState:
        self._state.watcher.set_override(None)
        return override_state(None)

    async def Route(self, request: admin_pb2.RouteRequest, context: Any) -> admin_pb2.RouteResponse:
        try:
            op = Op(request.op or "get")
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"op: must be one of {', '.join(Op)}")
        router = self._state.watcher.router
        decision = router.route(op, request.key, request.user or None)
        return admin_pb2.RouteResponse(
            route=decision.primary.value, reason=decision.reason.value,
            bucket=bucket(request.key, router.flags.bucket_salt), flags_revision=router.flags.revision,
            shadow=decision.compare, secondary=decision.secondary.value,
        )


def build_admin_server(state: AdminState) -> grpc.aio.Server:
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(state), server)
    return server
