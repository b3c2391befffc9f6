"""Cutover of a running proxy, step by step through its admin API.

Cutover (the migration plan's sequence): check the gates, pause writes, drain replication, final
sync, verify, switch everything to new (an override), resume writes, then watch health for the
monitoring window. Any failure (or an interrupt) rolls back by itself, undoing exactly what was
done: once traffic was switched, everything back to old; writes resumed if they were paused; a
failed gate changes nothing. No write is lost: while new is primary every write still reaches old
through the replication queue.

The write pause has a lease: the cutover renews it from a thread of its own while it works (the final
sync and verify included), so that a cutover killed while writes are paused leaves the proxy to
resume them by itself once the lease runs out. A cutover that finds its lease ran out (writes went
through meanwhile) rolls back rather than switching.

A proxy that stops answering (it died, say) fails the step it was in, gates included; the automatic
rollback then tries each undo on its own and reports, under `not_undone`, what it could not undo and
what becomes of it (the pause's lease resumes writes by itself; an override to new stays until
`turnout rollback`). The cutover always ends with its report and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy import statedir
from proxy.control.lease import PAUSE_LEASE_S, LeaseKeeper
from proxy.control.report import Follow, Report, Step, StepFailed, failure_detail
from proxy.control.rollback import DRAIN_TIMEOUT_S, record_rollback

#: Gates a cutover must pass (and --dry-run checks).
MAX_REPLICATION_DEPTH = 10_000
MAX_REPLICATION_AGE_S = 60.0
MAX_VERIFY_AGE_S = 24 * 3600.0


def gates(stub: admin_pb2_grpc.AdminStub, state_dir: Path, report: Report) -> None:
    """Replication lag, the last verify and health: each a step of its own."""
    with report.step("gate: backends healthy") as step:
        status: admin_pb2.StatusResponse = stub.Status(admin_pb2.StatusRequest(), timeout=5)
        failing = [f"{b.name} ({b.error})" for b in status.backends if not b.healthy]
        step.detail = "all healthy" if not failing else "failing: " + ", ".join(failing)
        if failing:
            raise StepFailed(step.detail)
    with report.step("gate: replication lag") as step:
        rep = status.replication
        step.detail = f"{rep.depth} pending, oldest {rep.oldest_age_seconds:.1f}s"
        if rep.depth > MAX_REPLICATION_DEPTH or rep.oldest_age_seconds > MAX_REPLICATION_AGE_S:
            raise StepFailed(step.detail)
    with report.step("gate: last verify clean") as step:
        last, age = statedir.last_verify(state_dir)
        if last is None or age is None:
            step.detail = "no verify on record: run `turnout verify` first"
            raise StepFailed(step.detail)
        step.detail = f"{'clean' if last.get('clean') else 'NOT clean'}, {age:.0f}s ago"
        if not last.get("clean") or age > MAX_VERIFY_AGE_S:
            raise StepFailed(step.detail)


def cutover(stub: admin_pb2_grpc.AdminStub, state_dir: Path, follow: Follow, monitor_s: float,
            dry_run: bool = False, reason: str = "cutover", lease_s: float = PAUSE_LEASE_S) -> Report:
    report = Report("cutover", dry_run=dry_run, pause_lease_s=lease_s)
    keeper = LeaseKeeper(stub, reason, lease_s)
    try:
        return _cutover(stub, state_dir, follow, monitor_s, dry_run, reason, report, keeper)
    finally:
        keeper.stop()
        report.pause_lease_lost = keeper.lost  # final: the keeper is stopped


def _cutover(stub: admin_pb2_grpc.AdminStub, state_dir: Path, follow: Follow, monitor_s: float,
             dry_run: bool, reason: str, report: Report, keeper: LeaseKeeper) -> Report:
    paused_at: float | None = None
    switched = False
    try:
        gates(stub, state_dir, report)
        if dry_run:
            report.steps.append(Step("plan", detail="pause writes; drain replication; final sync; verify; "
                                                    "switch to new; resume writes; watch health "
                                                    f"{monitor_s:.0f}s"))
            return report
        with report.step("pause writes"):
            paused_at = time.monotonic()  # set first: a pause that may have landed is undone too
            paused = stub.PauseWrites(admin_pb2.PauseWritesRequest(paused=True, reason=reason,
                                                                   lease_seconds=keeper.lease_s), timeout=5)
            keeper.start(paused)
        with report.step("drain replication") as step:
            state = stub.Drain(admin_pb2.DrainRequest(timeout_seconds=DRAIN_TIMEOUT_S), timeout=DRAIN_TIMEOUT_S + 5)
            step.detail = f"{state.depth} pending"
            if state.depth:
                raise StepFailed(f"{state.depth} writes still pending after {DRAIN_TIMEOUT_S:.0f}s")
            keeper.check(step)
        with report.step("final sync") as step:
            result = follow(stub.Migrate(admin_pb2.MigrateRequest(source="old", restart=True)), "final sync")
            step.detail = f"{result['migrated']} copied, {result['skipped']} already there"
            if result["error_count"]:
                raise StepFailed(f"{result['error_count']} keys failed to copy")
            keeper.check(step)
        with report.step("verify") as step:
            result = follow(stub.Verify(admin_pb2.VerifyRequest()), "verify")
            step.detail = f"{result['missing']} missing, {result['different']} different, {result['extra']} extra"
            if not result["clean"]:
                raise StepFailed(step.detail)
            keeper.check(step)  # writes that went through after the lease ran out were not synced: no switch
        with report.step("switch to new"):
            switched = True  # set first: a switch that may have landed is undone too
            stub.SetOverride(admin_pb2.SetOverrideRequest(route="new", reason=reason), timeout=5)
        with report.step("resume writes"):
            keeper.stop()  # no renewal may land after the resume and pause writes again
            stub.PauseWrites(admin_pb2.PauseWritesRequest(paused=False, reason=f"{reason} done"), timeout=5)
            assert paused_at is not None
            report.write_pause_s = time.monotonic() - paused_at
            paused_at = None
        with report.step(f"watch health {monitor_s:.0f}s") as step:
            watch(stub, monitor_s, step)
    except (StepFailed, KeyboardInterrupt) as failure:
        why = str(failure)
        if isinstance(failure, KeyboardInterrupt):
            why = "interrupted by a signal"
            report.ok = False
            if report.steps:  # the step that was running when the signal came
                report.steps[-1].ok = False
                report.steps[-1].detail = why
        if dry_run or (paused_at is None and not switched):
            return report  # nothing was changed: nothing to undo
        report.rolled_back = True
        keeper.stop()
        undo(stub, report, why, switched, paused_at is not None)
        if paused_at is not None:
            report.write_pause_s = time.monotonic() - paused_at
        record_rollback(stub, admin_pb2.RollbackRecord(
            reason=f"cutover failed: {why}", ok=report.steps[-1].ok, automatic=True,
            detail=report.steps[-1].detail))
    return report


def undo(stub: admin_pb2_grpc.AdminStub, report: Report, why: str, switched: bool, paused: bool) -> None:
    """The automatic rollback's step: each change undone on its own, so that one the proxy does not
    answer (it died, say) still leaves the other tried; what could not be undone is reported with
    what becomes of it, and fails the step."""
    step = Step("roll back (automatic)")
    report.steps.append(step)
    started = time.monotonic()
    done: list[str] = []
    if switched:
        try:
            stub.SetOverride(admin_pb2.SetOverrideRequest(route="old", reason=f"cutover failed: {why}"), timeout=5)
            done.append("everything to old")
        except grpc.RpcError as exc:
            report.not_undone.append(f"routing back to old ({failure_detail(exc)}): the override to new is kept "
                                     "in state_dir and stays, across a restart too, until `turnout rollback`")
    if paused:
        try:
            stub.PauseWrites(admin_pb2.PauseWritesRequest(paused=False, reason="cutover rolled back"), timeout=5)
            done.append("writes resumed")
        except grpc.RpcError as exc:
            lease = f"{report.pause_lease_s:g}s " if report.pause_lease_s else ""
            report.not_undone.append(f"resuming writes ({failure_detail(exc)}): the pause's {lease}lease, no "
                                     "longer renewed, resumes them by itself (a restarted proxy starts with "
                                     "writes open)")
    parts = [", ".join(done)] if done else []
    if not switched:
        parts.append("routing was never changed")
    if report.not_undone:
        parts.append("could not undo: " + "; ".join(what.split(" (", 1)[0] for what in report.not_undone))
        step.ok = report.ok = False
    step.detail = "; ".join(parts)
    step.duration_s = time.monotonic() - started


def watch(stub: admin_pb2_grpc.AdminStub, seconds: float, step: Step) -> None:
    """Fail when new becomes unhealthy or its errors grow during the window."""
    deadline = time.monotonic() + seconds
    while True:
        status: admin_pb2.StatusResponse = stub.Status(admin_pb2.StatusRequest(), timeout=5)
        new = next((b for b in status.backends if b.name == "new"), None)
        if new is not None and not new.healthy:
            step.detail = f"new backend failing: {new.error}"
            raise StepFailed(step.detail)
        if time.monotonic() >= deadline:
            step.detail = "new backend healthy throughout"
            return
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
