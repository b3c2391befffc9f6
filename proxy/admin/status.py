"""The proxy's Status: what the admin API's Status call and /status.json both answer.

Worker 0 of `turnout serve --workers N` answers for the whole proxy: its own figures with every other
worker's folded in, and one line per worker (proxy.workers.relay).
"""

from __future__ import annotations

import json
import os
import time

from turnout.admin.v1 import admin_pb2

from proxy import __version__, statedir
from proxy.admin.documents import canary_state, override_state, pause_state, replication_state
from proxy.admin.state import AdminState
from proxy.data.coverage import coverage_document
from proxy.data.rules import rules_document
from proxy.migration.checksum import summarize
from proxy.secrets import mask
from proxy.workers.relay import RELAY_TIMEOUT_S, merge_status, relay, worker_state


async def proxy_status(state: AdminState, records: bool = False) -> admin_pb2.StatusResponse:
    """This process's status and, on worker 0, every other worker's; `records` counts and checksums
    each backend (a scan of both stores, so only on request)."""
    watcher = state.watcher
    reload = watcher.status()
    response = admin_pb2.StatusResponse(
        version=__version__,
        flags_json=json.dumps(watcher.router.flags.to_document()),
        reload=admin_pb2.ReloadState(
            path=reload.path, revision=reload.revision, last_attempt_unix=reload.last_attempt,
            last_success_unix=reload.last_success, failures=reload.failures, last_error=reload.last_error,
        ),
        override=override_state(watcher.override),
        started_unix=state.started,
    )
    if state.last_rollback is not None:
        response.last_rollback.CopyFrom(state.last_rollback)
    guard = state.guard
    if guard is not None:
        response.canary.CopyFrom(canary_state(guard.canary, watcher.file_flags.canary))
        response.health_json = json.dumps(guard.document())
    plane = state.plane
    if plane is not None:
        snapshot = plane.snapshot()
        response.replication.CopyFrom(replication_state(snapshot.replication))
        response.writes.CopyFrom(pause_state(snapshot.writes))
        report, shadow = snapshot.discrepancies, snapshot.shadow
        response.shadow_json = json.dumps({
            "compared": sum(report.compared.values()), "discrepancies": report.total, "rate": report.rate,
            "not_migrated": sum(report.not_migrated.values()),  # the backfill had not reached the key
            "by_kind": dict(report.by_kind), "by_op": dict(report.by_op),
            "skipped": shadow.skipped, "failures": shadow.failures,
            "pending_not_compared": shadow.pending_not_compared,
            "keys_not_compared": shadow.keys_not_compared,
            # Numbers only, so that worker 0 adds the workers' up; read together once merged (below).
            "comparison_rule_hits": shadow.rule_hits.by_index(watcher.router.flags),
            "coverage": shadow.coverage.document(),
            **snapshot.metrics.to_document(),
            **({"records": {route.value: (await summarize(backend)).to_document()
                            for route, backend in plane.backends().items()}} if records else {}),
        })
        for backend in snapshot.backends:
            response.backends.append(admin_pb2.BackendState(
                # mask: a driver's message may quote the address it failed to reach, password and all.
                name=backend.name, type=backend.type, healthy=backend.healthy, error=mask(backend.error),
            ))
    others = state.other_workers()
    if others or state.worker:
        response.workers.append(worker_state(state.worker, os.getpid(), response))
    if others:
        asked = admin_pb2.StatusRequest()  # records: the backends are shared, worker 0 counted them
        answers = await relay(others, lambda stub: stub.Status(asked, timeout=RELAY_TIMEOUT_S), state.admin_token)
        merge_status(response, answers)
    if plane is not None and not state.worker:  # worker 0 (or a lone process) speaks for the proxy
        response.shadow_json = json.dumps(_with_rules_and_coverage(state, json.loads(response.shadow_json)))
    return response


def _with_rules_and_coverage(state: AdminState, shadow: dict[str, object]) -> dict[str, object]:
    """The shadow document of the whole proxy with its comparison rules (hits of every worker) and its
    key-space coverage (the workers' shadow comparisons beside the last verify's key counts)."""
    hits = shadow.pop("comparison_rule_hits", None)
    shadow["comparison_rules"] = rules_document(state.watcher.router.flags, hits if isinstance(hits, dict) else {})
    record, age = statedir.last_verify(state.state_dir)
    compared = shadow.pop("coverage", None)
    shadow["coverage"] = coverage_document(compared if isinstance(compared, dict) else None, record,
                                           None if age is None else time.time() - age)
    return shadow
