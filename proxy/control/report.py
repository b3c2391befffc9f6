"""The report of a cutover or rollback: its steps, each timed and named, and how it is shown and kept.

A step that raises fails the report and says why (a call the proxy did not answer, because it died
say, included: it ends the cutover with this report, never a traceback); the report is printed as a
summary or as JSON, and kept in state_dir as an incident when a switch went wrong or was undone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from proxy import statedir

#: Follows a streamed admin job (Migrate, Verify) to its result document; the label names it on a terminal.
Follow = Callable[[Any, str], dict[str, Any]]


class StepFailed(Exception):
    """A step did not hold; its message names the step and why."""


def failure_detail(exc: BaseException) -> str:
    """What a step's failure says: for a call the proxy did not answer, its status code and details in
    one line (a grpc error's own text is a multi-line debug dump)."""
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        code = exc.code()
        gone = " (the proxy is not answering)" if code in (grpc.StatusCode.UNAVAILABLE,
                                                           grpc.StatusCode.DEADLINE_EXCEEDED) else ""
        return f"{code.name}{gone}: {exc.details()}"
    return str(exc) or type(exc).__name__


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
    #: What an automatic rollback could not undo (the proxy went away), each with what becomes of it.
    not_undone: list[str] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        step = Step(name)
        self.steps.append(step)
        started = time.monotonic()
        try:
            yield step
        except Exception as exc:
            step.ok = False
            why = failure_detail(exc)
            if not step.detail:
                step.detail = why
            elif isinstance(exc, grpc.RpcError):  # keep what the step found before the proxy stopped answering
                step.detail = f"{step.detail}; {why}"
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


def record_incident(state_dir: Path, reason: str, report: Report) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = statedir.incident_path(state_dir, stamp, report.action)
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
    lines += [f"  NOT UNDONE: {what}" for what in report.not_undone]
    return "\n".join(lines)

