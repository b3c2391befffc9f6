"""The operators' API (proto turnout.admin.v1), served on `admin.listen`, never on the data port.

With `turnout serve --workers N`, worker 0 answers for the whole proxy: the changes it is asked for
(override, write pause, drain) it makes at home and then on every other worker, and its Status and
/metrics cover them all (proxy/peers.py). Migrate, Verify and the rollback record stay in worker 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy import __version__
from proxy.data.plane import DataPlane
from proxy.data.writegate import PauseStatus
from proxy.errors import TurnoutError
from proxy.migration.checksum import summarize
from proxy.migration.migrate import load_transform, migrate
from proxy.migration.stores import Stores
from proxy.migration.verify import verify
from proxy.progress import Progress
from proxy.replication.queue import QueueStats
from proxy.routing.router import Op, Override, Route, explain
from proxy.routing.watcher import FlagWatcher
from proxy.telemetry.metrics import Exposition, render_latency
from proxy.telemetry.tracing import Telemetry
from proxy.workers.relay import (
    RELAY_TIMEOUT_S,
    Peer,
    current,
    failure,
    holds_on,
    merge_pause,
    merge_replication,
    merge_status,
    merged_metrics,
    relay,
    worker_state,
)

if TYPE_CHECKING:
    from turnout.admin.v1.admin_pb2_grpc import AdminAsyncStub

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class AdminState:
    """What the admin API reads and steers; the data plane is None until the backends are open."""

    watcher: FlagWatcher
    plane: DataPlane | None
    started: float
    state_dir: Path
    telemetry: Telemetry
    last_rollback: admin_pb2.RollbackRecord | None = None
    #: This process's index under `turnout serve --workers N` (0 for a single process).
    worker: int = 0
    #: Worker 0's way to the others: (index, "host:port" of its admin front) of every other worker, read
    #: afresh on each call (a restarted worker listens on a new port). Empty everywhere else.
    peers: Callable[[], Sequence[tuple[int, str]]] = lambda: ()

    def other_workers(self) -> tuple[Peer, ...]:
        """The workers this one speaks for: none unless it is worker 0 (the others never relay)."""
        return current(self.peers) if self.worker == 0 else ()


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
        if self._state.last_rollback is not None:
            response.last_rollback.CopyFrom(self._state.last_rollback)
        plane = self._state.plane
        if plane is not None:
            snapshot = plane.snapshot()
            response.replication.CopyFrom(replication_state(snapshot.replication))
            response.writes.CopyFrom(pause_state(snapshot.writes))
            report, shadow = snapshot.discrepancies, snapshot.shadow
            response.shadow_json = json.dumps({
                "compared": sum(report.compared.values()), "discrepancies": report.total, "rate": report.rate,
                "by_kind": dict(report.by_kind), "by_op": dict(report.by_op),
                "skipped": shadow.skipped, "failures": shadow.failures,
                "pending_not_compared": shadow.pending_not_compared,
                "keys_not_compared": shadow.keys_not_compared,
                **snapshot.metrics.to_document(),
                **({"records": {route.value: (await summarize(backend)).to_document()
                                for route, backend in plane.backends().items()}} if request.records else {}),
            })
            for backend in snapshot.backends:
                response.backends.append(admin_pb2.BackendState(
                    name=backend.name, type=backend.type, healthy=backend.healthy, error=backend.error,
                ))
        others = self._state.other_workers()
        if others or self._state.worker:
            response.workers.append(worker_state(self._state.worker, os.getpid(), response))
        if others:
            asked = admin_pb2.StatusRequest()  # records: the backends are shared, worker 0 counted them
            merge_status(response, await relay(others, lambda stub: stub.Status(asked, timeout=RELAY_TIMEOUT_S)))
        return response

    async def SetOverride(self, request: admin_pb2.SetOverrideRequest, context: Any) -> admin_pb2.OverrideState:
        try:
            route = Route(request.route or "old")
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"route: must be old or new, got {request.route!r}")
        override = Override(route=route, reason=request.reason or "operator override", since=time.time())
        self._state.watcher.set_override(override)
        log.warning("override: everything to %s (%s)", route.value, override.reason)
        self._event("turnout.override", {"turnout.route": route.value, "turnout.override.reason": override.reason})
        await self._relay(context, f"the override to {route.value}",
                          lambda stub: stub.SetOverride(request, timeout=RELAY_TIMEOUT_S))
        return override_state(override)

    async def ClearOverride(self, request: admin_pb2.ClearOverrideRequest, context: Any) -> admin_pb2.OverrideState:
        self._state.watcher.set_override(None)
        log.warning("override cleared: the flag file decides again")
        self._event("turnout.override.cleared", {})
        await self._relay(context, "clearing the override",
                          lambda stub: stub.ClearOverride(request, timeout=RELAY_TIMEOUT_S))
        return override_state(None)

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
        answers = await relay(others, call)
        if any(answer.error for answer in answers):
            message = f"{failure(what, answers)}; {holds_on(answers, self._state.worker)}"
            log.error("%s", message)
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)
        return [(answer.peer.index, answer.reply) for answer in answers if answer.reply is not None]

    def _event(self, name: str, attributes: dict[str, Any]) -> None:
        self._state.telemetry.event(name, attributes)

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
        answers = await relay(others, lambda stub: stub.PauseWrites(request, timeout=RELAY_TIMEOUT_S))
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
        for answer in await relay(others, lambda stub: stub.PauseWrites(resume, timeout=RELAY_TIMEOUT_S)):
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
        stores = self._stores()
        progress = Progress("migrate", None, enabled=False)
        try:
            transform = load_transform(request.transform) if request.transform else None
        except TurnoutError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        job = asyncio.create_task(migrate(
            stores, self._state.state_dir, Route(request.source or "old"), request.batch_size or 500,
            request.concurrency or 16, request.rate or None, transform, request.restart, progress,
        ))
        async for update in _follow(job, progress):
            yield update

    async def Verify(self, request: admin_pb2.VerifyRequest, context: Any) -> AsyncIterator[admin_pb2.JobUpdate]:
        progress = Progress("verify", None, enabled=False)
        truth = Route(request.truth) if request.truth else None
        job = asyncio.create_task(verify(self._stores(), request.repair, progress, truth, self._state.state_dir))
        async for update in _follow(job, progress):
            yield update

    async def RecordRollback(self, request: admin_pb2.RollbackRecord, context: Any) -> admin_pb2.RollbackRecord:
        record = admin_pb2.RollbackRecord()
        record.CopyFrom(request)
        record.time_unix = time.time()
        self._state.last_rollback = record
        outcome = "ok" if record.ok else "failed"
        (log.warning if record.ok else log.error)(
            "%s rollback %s: %s%s%s", "automatic" if record.automatic else "operator", outcome, record.reason,
            f"; {record.detail}" if record.detail else "", f"; incident {record.incident}" if record.incident else "")
        self._state.telemetry.rollback(record.reason, record.ok, record.automatic, record.detail, record.incident)
        # Not relayed: worker 0's status speaks for the proxy, and one rollback is one span.
        return record


async def _follow(job: asyncio.Task[Any], progress: Progress) -> AsyncIterator[admin_pb2.JobUpdate]:
    """Stream a job's progress every half second, then its result (or its error)."""
    while not job.done():
        await asyncio.wait([job], timeout=0.5)
        if not job.done():
            yield admin_pb2.JobUpdate(done=progress.done, total=progress.total or 0)
    if job.exception() is not None:
        yield admin_pb2.JobUpdate(done=progress.done, error=str(job.exception()))
        return
    yield admin_pb2.JobUpdate(done=progress.done, total=progress.total or 0,
                              result_json=json.dumps(job.result().to_document()))


_INT64_TYPES = frozenset({
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
})


def message_document(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data, every field present, 64-bit integers as numbers (the proto3 JSON
    mapping writes them as strings, which `jq '.replication.depth > 100'` would compare as text)."""
    doc = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _numbers(message, doc)
    return doc


def _numbers(message: Message, doc: dict[str, Any]) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.name not in doc:
            continue
        if field.type in _INT64_TYPES:
            value = doc[field.name]
            doc[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            value = getattr(message, field.name)
            if isinstance(doc[field.name], list):
                for item, item_doc in zip(value, doc[field.name], strict=True):
                    _numbers(item, item_doc)
            elif isinstance(doc[field.name], dict):
                _numbers(value, doc[field.name])


def status_document(status: admin_pb2.StatusResponse) -> dict[str, Any]:
    """What `turnout status --json` and /status.json show: the status with its flags and shadow
    documents decoded."""
    doc = message_document(status)
    doc["flags"] = json.loads(doc.pop("flags_json"))
    doc["shadow"] = json.loads(doc.pop("shadow_json") or "{}")
    return doc


def pause_state(status: PauseStatus) -> admin_pb2.PauseState:
    return admin_pb2.PauseState(paused=status.paused, reason=status.reason, lease_expires_unix=status.lease_expires,
                                leases_expired=status.leases_expired, last_lease_expired_unix=status.last_expired,
                                last_lease_expired_reason=status.last_expired_reason)


def replication_state(stats: QueueStats) -> admin_pb2.ReplicationState:
    return admin_pb2.ReplicationState(depth=stats.depth, oldest_age_seconds=stats.oldest_age_s,
                                      replayed=stats.replayed, failures=stats.failures,
                                      last_error=stats.last_error or "")


def build_admin_server(state: AdminState) -> grpc.aio.Server:
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(state), server)
    return server


async def admin_page(state: AdminState, path: str, query: str) -> tuple[int, str, bytes]:
    """The plain-HTTP side of the admin port: /metrics, /status.json, /discrepancies.json, the dashboard."""
    if path == "/metrics":
        text = await render_metrics(state, with_records="records=1" in query.split("&"))
        others = state.other_workers()
        if others:  # the backends are shared: their records are counted once, by worker 0
            text = await merged_metrics(state.worker, text, others)
        return 200, "text/plain; version=0.0.4; charset=utf-8", text.encode()
    if path == "/status.json":
        status = await AdminService(state).Status(admin_pb2.StatusRequest(), None)
        return 200, "application/json", json.dumps(status_document(status)).encode()
    if path == "/discrepancies.json":
        report = state.plane.snapshot().discrepancies.to_document() if state.plane else {}
        return 200, "application/json", json.dumps(report).encode()
    if path in ("/", "/dashboard"):
        return 200, "text/html; charset=utf-8", DASHBOARD.encode()
    return 404, "text/plain", b"not found: try /metrics, /status.json, /discrepancies.json or /\n"


async def render_metrics(state: AdminState, with_records: bool = False) -> str:
    out = Exposition()
    watcher = state.watcher
    reload = watcher.status()
    out.family("turnout_flags_info", "gauge", "The flag revision in force.", [({"revision": reload.revision}, 1)])
    out.family("turnout_flags_reload_failures_total", "counter", "Flag files refused.", [({}, reload.failures)])
    override = watcher.override
    out.family("turnout_override_active", "gauge", "1 while an operator override routes everything to one backend.",
               [({"route": override.route.value if override else ""}, 1 if override else 0)])
    plane = state.plane
    if plane is None:
        return out.text()
    snapshot = plane.snapshot()
    metrics = snapshot.metrics
    out.family("turnout_operations_total", "counter", "Operations by operation and route.",
               [({"op": op, "route": route}, n) for (op, route), n in sorted(metrics.operations.items())])
    report = snapshot.discrepancies
    out.family("turnout_shadow_compared_total", "counter", "Operations compared in shadow mode.",
               [({"op": op}, n) for op, n in sorted(report.compared.items())])
    out.family("turnout_discrepancies_total", "counter", "Discrepancies by kind.",
               [({"kind": kind}, n) for kind, n in sorted(report.by_kind.items())])
    out.family("turnout_discrepancies_by_op_total", "counter", "Discrepancies by operation.",
               [({"op": op}, n) for op, n in sorted(report.by_op.items())])
    out.family("turnout_discrepancy_rate", "gauge", "Discrepancies over compared operations.", [({}, report.rate)])
    out.family("turnout_shadow_skipped_total", "counter", "Shadow calls skipped over the in-flight bound.",
               [({}, snapshot.shadow.skipped)])
    out.family("turnout_discrepancy_log_dropped_total", "counter", "Discrepancies the log could not write.",
               [({}, snapshot.dropped_discrepancies)])
    render_latency(out, metrics)
    out.family("turnout_backend_errors_total", "counter", "Failed backend calls by backend and operation.",
               [({"backend": b, "op": o}, n) for (b, o), n in sorted(metrics.errors.items())])
    out.family("turnout_backend_healthy", "gauge", "1 when the backend's last call succeeded.",
               [({"backend": b.name}, 1 if b.healthy else 0) for b in snapshot.backends])
    stats = snapshot.replication
    out.family("turnout_replication_queue_depth", "gauge", "Writes waiting to reach the other backend.",
               [({}, stats.depth)])
    out.family("turnout_replication_oldest_age_seconds", "gauge", "Age of the oldest waiting write.",
               [({}, stats.oldest_age_s)])
    out.family("turnout_replication_replayed_total", "counter", "Writes copied by the replayer.",
               [({}, stats.replayed)])
    out.family("turnout_replication_failures_total", "counter", "Failed replay attempts.", [({}, stats.failures)])
    if with_records:
        summaries = {route.value: await summarize(backend) for route, backend in plane.backends().items()}
        out.family("turnout_backend_records", "gauge", "Records each backend holds (on request).",
                   [({"backend": name}, s.records) for name, s in summaries.items()])
        out.family("turnout_backend_checksum_info", "gauge", "Content checksum of each backend (on request).",
                   [({"backend": name, "checksum": s.checksum}, 1) for name, s in summaries.items()])
    return out.text()


DASHBOARD = """<!doctype html>
<html><head><meta charset="utf-8"><title>turnout</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:60em}td,th{padding:2px 10px;text-align:left}
.bad{color:#b00}.ok{color:#070}pre{background:#f4f4f4;padding:8px}</style></head>
<body><h1>turnout</h1><div id="status">loading...</div>
<script>
async function refresh() {
  const s = await (await fetch('/status.json')).json();
  const d = await (await fetch('/discrepancies.json')).json();
  const rows = (s.backends || []).map(b => `<tr><td>${b.name}</td><td>${b.type}</td>` +
    `<td class="${b.healthy ? 'ok' : 'bad'}">${b.healthy ? 'healthy' : 'FAILING ' + b.error}</td></tr>`).join('');
  document.getElementById('status').innerHTML =
    `<p>flags revision <b>${s.reload.revision}</b>${s.reload.last_error ? ' <span class="bad">last reload failed: ' +
      s.reload.last_error + '</span>' : ''}</p>` +
    `<p>override: ${s.override.active ? '<b class="bad">everything to ' + s.override.route + '</b> (' +
      s.override.reason + ')' : 'none'}</p>` +
    `<p>replication: ${s.replication.depth} pending, oldest ${s.replication.oldest_age_seconds.toFixed(1)} s</p>` +
    `<table><tr><th>backend</th><th>type</th><th>health</th></tr>${rows}</table>` +
    `<p>discrepancies: ${d.total || 0} of ${d.compared || 0} compared (rate ${(d.rate || 0).toFixed(4)})</p>` +
    `<pre>${JSON.stringify(d.by_kind || {}, null, 1)}</pre><pre>${JSON.stringify(s.flags, null, 1)}</pre>`;
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
