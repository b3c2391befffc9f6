"""Rollback of a running proxy through its admin API: everything to old, drain replication, sync back
what new holds (each difference copied from new under the key's lock, unless a later write got
there first; nothing is deleted from old), verify that old holds everything new holds, and record
the incident in state_dir and on the proxy (its log, a `turnout.rollback` span, its status).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy.control.report import Follow, Report, Step, StepFailed, record_incident

#: How long a drain may take before the step fails.
DRAIN_TIMEOUT_S = 30.0


def rollback(stub: admin_pb2_grpc.AdminStub, state_dir: Path, follow: Follow, reason: str) -> Report:
    report = Report("rollback")
    try:
        with report.step("route everything to old"):
            stub.SetOverride(admin_pb2.SetOverrideRequest(route="old", reason=reason), timeout=5)
        with report.step("drain replication") as step:
            state = stub.Drain(admin_pb2.DrainRequest(timeout_seconds=DRAIN_TIMEOUT_S), timeout=DRAIN_TIMEOUT_S + 5)
            step.detail = f"{state.depth} pending"
        with report.step("sync back what only new has") as step:
            result = follow(stub.Verify(admin_pb2.VerifyRequest(repair=True, truth="new")), "sync back")
            step.detail = f"{result['repaired']} keys copied from new"
        with report.step("verify old") as step:
            check_old_holds_new(follow(stub.Verify(admin_pb2.VerifyRequest()), "verify"), step)
    except StepFailed:
        pass
    incident = record_incident(state_dir, reason, report)
    record_rollback(stub, admin_pb2.RollbackRecord(
        reason=reason, ok=report.ok, detail=report.outcome("old holds everything"), incident=str(incident)))
    return report


def check_old_holds_new(result: dict[str, Any], step: Step) -> None:
    """Rollback succeeds when old holds every document new holds; keys only old has are left alone."""
    step.detail = (f"{result['extra']} only in new, {result['different']} different; "
                   f"{result['missing']} only in old (left as they are)")
    if result["extra"] or result["different"]:
        raise StepFailed(step.detail)


def record_rollback(stub: admin_pb2_grpc.AdminStub, record: admin_pb2.RollbackRecord) -> bool:
    """Tell the proxy (its log, a `turnout.rollback` span, status); a proxy too old to know the call, or
    one that went away, does not fail the rollback, whose incident file is the record that counts."""
    try:
        stub.RecordRollback(record, timeout=5)
    except grpc.RpcError:
        return False
    return True
