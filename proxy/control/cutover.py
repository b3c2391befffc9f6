"""Cutover and rollback of a running proxy, step by step through its admin API.

Cutover (the migration plan's sequence): check the gates, pause writes, drain replication, final
sync, verify, switch everything to new (an override), resume writes, then watch health for the
monitoring window. Any failure (or an interrupt) rolls back by itself, undoing exactly what was
done: once traffic was switched, everything back to old; writes resumed if they were paused; a
failed gate changes nothing. No write is lost: while new is primary every write still reaches old
through the replication queue.

Rollback: everything to old (an override), drain replication, sync back what new holds (each
difference copied from new, under the key's lock, unless a later write got there first; nothing is
deleted from old), verify that old holds everything new holds, and record the incident in state_dir.

The write pause has a lease: the cutover renews it from a thread of its own while it works (the final
sync and verify included), so that a cutover killed while writes are paused leaves the proxy to
resume them by itself once the lease runs out. A cutover that finds its lease ran out (writes went
through meanwhile) rolls back rather than switching.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy import statedir

#: Gates a cutover must pass (and --dry-run checks).
MAX_REPLICATION_DEPTH = 10_000
MAX_REPLICATION_AGE_S = 60.0
MAX_VERIFY_AGE_S = 24 * 3600.0
DRAIN_TIMEOUT_S = 30.0
#: The write pause's lease: the proxy resumes writes by itself when it is not renewed for this long.
PAUSE_LEASE_S = 10.0

Follow = Callable[[Any, str], dict[str, Any]]


class StepFailed(Exception):
    pass


@dataclass
class Step:
    name: str
    ok: bool = True
    duration_s: float = 0.0
    detail: str = ""


@dataclass
class Report:
    action: str
    ok: bool = True
    steps: list[Step] = field(default_factory=list)
    write_pause_s: float | None = None
    rolled_back: bool = False
    dry_run: bool = False
    pause_lease_s: float | None = None
    pause_lease_lost: str = ""  # when the proxy resumed writes itself because the lease ran out

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        step = Step(name)
        self.steps.append(step)
        started = time.monotonic()
        try:
            yield step
        except Exception as exc:
            step.ok = False
            step.detail = step.detail or str(exc)
            self.ok = False
            raise StepFailed(f"{name}: {step.detail}") from exc
        finally:
            step.duration_s = time.monotonic() - started

    def outcome(self, when_ok: str) -> str:
        """The first failed step as "name: detail", or when_ok when no step failed."""
        failed = next((s for s in self.steps if not s.ok), None)
        return f"{failed.name}: {failed.detail}" if failed else when_ok

    def to_document(self) -> dict[str, Any]:
        return asdict(self)


class LeaseKeeper:
    """Renews the write pause's lease every quarter of it, on a thread of its own, until stopped.

    `lost` says why the pause is gone (the lease ran out, or writes were resumed by someone else)."""

    def __init__(self, stub: admin_pb2_grpc.AdminStub, reason: str, lease_s: float) -> None:
        self._stub = stub
        self._reason = reason
        self.lease_s = lease_s
        self.renewals = 0
        self.lost = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pause-lease", daemon=True)
        self._renewed = time.monotonic()
        self._expired_before = 0

    def start(self, paused: admin_pb2.PauseState) -> LeaseKeeper:
        self._renewed = time.monotonic()
        self._expired_before = paused.leases_expired
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = self.lease_s / 4
        while not self._stop.wait(interval):
            try:
                state: admin_pb2.PauseState = self._stub.PauseWrites(admin_pb2.PauseWritesRequest(
                    paused=True, reason=self._reason, lease_seconds=self.lease_s, renew=True), timeout=interval)
            except grpc.RpcError as exc:  # the proxy is slow or away: try again while the lease may hold
                if time.monotonic() - self._renewed > self.lease_s:
                    self.lost = f"the write pause lease could not be renewed for {self.lease_s:g}s: {exc}"
                    return
                continue
            if self._stop.is_set():
                return
            if not state.paused:
                expired = state.leases_expired > self._expired_before
                self.lost = ("the proxy resumed writes before the cutover was done: "
                             + ("the pause's lease ran out" if expired else "someone else resumed them"))
                return
            self.renewals += 1
            self._renewed = time.monotonic()

    def stop(self) -> None:
        """Stop renewing; once this returns no renewal is in flight (so a resume cannot be undone)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def check(self, step: Step) -> None:
        """Fail the step when the pause is gone: writes may have gone through that it did not see."""
        if self.lost:
            step.detail = f"{step.detail}; {self.lost}" if step.detail else self.lost
            raise StepFailed(step.detail)


def gates(stub: admin_pb2_grpc.AdminStub, state_dir: Path, report: Report) -> None:
    """Replication lag, the last verify and health: each a step of its own."""
    status: admin_pb2.StatusResponse = stub.Status(admin_pb2.StatusRequest(), timeout=5)
    with report.step("gate: backends healthy") as step:
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
        with report.step("roll back (automatic)") as step:
            done = []
            if switched:
                stub.SetOverride(admin_pb2.SetOverrideRequest(route="old", reason=f"cutover failed: {why}"),
                                 timeout=5)
                done.append("everything to old")
            if paused_at is not None:
                stub.PauseWrites(admin_pb2.PauseWritesRequest(paused=False, reason="cutover rolled back"), timeout=5)
                done.append("writes resumed")
            step.detail = ", ".join(done) + ("" if switched else "; routing was never changed")
        if paused_at is not None:
            report.write_pause_s = time.monotonic() - paused_at
        record_rollback(stub, admin_pb2.RollbackRecord(
            reason=f"cutover failed: {why}", ok=report.steps[-1].ok, automatic=True,
            detail=report.steps[-1].detail))
    return report


def record_rollback(stub: admin_pb2_grpc.AdminStub, record: admin_pb2.RollbackRecord) -> bool:
    """Tell the proxy (its log, a `turnout.rollback` span, status); a proxy too old to know the call, or
    one that went away, does not fail the rollback, whose incident file is the record that counts."""
    try:
        stub.RecordRollback(record, timeout=5)
    except grpc.RpcError:
        return False
    return True


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


def record_incident(state_dir: Path, reason: str, report: Report) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = state_dir / "incidents" / f"{stamp}-{report.action}.json"
    statedir.write_json(path, {"time": time.time(), "reason": reason, **report.to_document()})
    return path


def summary(report: Report) -> str:
    verdict = "ok" if report.ok else ("ROLLED BACK" if report.rolled_back else "FAILED")
    title = f"{report.action}{' (dry run)' if report.dry_run else ''}: {verdict}"
    lines = [title]
    lines += [f"  {'ok ' if s.ok else 'FAIL'} {s.name} ({s.duration_s:.2f}s) {s.detail}" for s in report.steps]
    if report.write_pause_s is not None:
        lines.append(f"  writes were paused for {report.write_pause_s:.3f}s")
    if report.pause_lease_lost:
        lines.append(f"  {report.pause_lease_lost}")
    return "\n".join(lines)


def as_json(report: Report) -> str:
    return json.dumps(report.to_document())
