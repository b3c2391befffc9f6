"""What the go/no-go checkpoints must remember across restarts, in state_dir: when shadow mode began,
and the rollbacks and resumes since (a rollback drill is one of each).

One small JSON document, replaced atomically; the newest MAX_EVENTS events are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy import statedir
from proxy.statedir import SAFETY_RECORDS_FILE

MAX_EVENTS = 100


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "rollback" or "resume"
    time: float
    automatic: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SafetyRecords:
    shadow_since: float | None  # when shadow mode was first seen in force; None: never
    events: tuple[Event, ...]

    def drill_done(self) -> tuple[bool, str]:
        """Whether a rollback and a resume after it happened since shadow mode began, and what was seen."""
        if self.shadow_since is None:
            return False, "shadow mode has not been on"
        since = [e for e in self.events if e.time >= self.shadow_since]
        rollback = next((e for e in since if e.kind == "rollback"), None)
        if rollback is None:
            return False, "no rollback since shadow mode began"
        resume = next((e for e in since if e.kind == "resume" and e.time >= rollback.time), None)
        if resume is None:
            return False, "a rollback, but no resume after it"
        return True, "a rollback and a resume since shadow mode began"


def read(state_dir: Path) -> SafetyRecords:
    doc: dict[str, Any] = statedir.read_json(state_dir / SAFETY_RECORDS_FILE) or {}
    since = doc.get("shadow_since")
    return SafetyRecords(
        shadow_since=None if since is None else float(since),
        events=tuple(Event(kind=str(e["kind"]), time=float(e["time"]), automatic=bool(e.get("automatic", False)),
                           reason=str(e.get("reason", ""))) for e in doc.get("events", [])),
    )


def note_shadow(state_dir: Path, now: float) -> None:
    """Remember when shadow mode began (only its first moment counts)."""
    records = read(state_dir)
    if records.shadow_since is None:
        _write(state_dir, SafetyRecords(now, records.events))


def note_event(state_dir: Path, event: Event) -> None:
    records = read(state_dir)
    _write(state_dir, SafetyRecords(records.shadow_since, (*records.events, event)[-MAX_EVENTS:]))


def _write(state_dir: Path, records: SafetyRecords) -> None:
    statedir.write_json(state_dir / SAFETY_RECORDS_FILE, {
        "shadow_since": records.shadow_since,
        "events": [{"kind": e.kind, "time": e.time, "automatic": e.automatic, "reason": e.reason}
                   for e in records.events],
    })
