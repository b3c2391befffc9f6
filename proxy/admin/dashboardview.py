"""The document the dashboard polls (/dashboard.json): the migration's phase, traffic, the canary, the
figures over time, the latest discrepancies, replication, the jobs, rollbacks, health and a confidence
score with its terms. Built from what status already says (worker 0's status sums every worker) and
the guard's history, so it holds nothing /status.json and /discrepancies.json do not already show.

The phase, from the flags in force (a canary's step included), the operator override and the canary:

- override to old: **rolled back** (automatic, with the trigger that tripped, or by an operator);
- override to new: **4 cut over**;
- use_new_storage off: **0 old only**;
- a canary in the flag file: rolled_back is **rolled back**, done at 100 % is **4 cut over**, any other
  state is **canary step k of n at X %** (phase 2 up to 50 %, 3 above);
- read and write both at 100 %: **4 cut over**;
- some share above 0 (or keys or users sent to new): **2 gradual switchover** while the larger share
  is at most 50 %, **3** above 50 %;
- no share on new, shadow mode on: **1 shadow**; off: **0 old only** (new is wired but unused).

The confidence score with its terms is proxy.admin.confidence's.

Beside them (issue 15): the key-space coverage by prefix (coverage_view, from status's
top-level coverage) and the comparison rules with their hits, an expired one flagged with its owner
(rules_view, from status's shadow.comparison_rules). A discrepancy's triage record is not in this
document: the page asks /discrepancies.json?key=K for it when a row is clicked, since the records
are read from every worker's log and most polls need none.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from proxy import statedir
from proxy.admin.confidence import confidence, evidence
from proxy.admin.documents import status_document
from proxy.admin.jobs import job_board
from proxy.admin.state import AdminState
from proxy.admin.status import proxy_status
from proxy.statedir import CHECKPOINT_FILE

#: How far back the charts go (the guard's history keeps 30 minutes).
SERIES_S = 1800.0
BACKENDS = ("old", "new")
QUANTILES = ("p50", "p95", "p99")


@dataclass(frozen=True, slots=True)
class Phase:
    number: int | None  # 0..4 as the plan counts them; None when rolled back
    name: str  # old_only, shadow, gradual, canary, cut_over, rolled_back
    text: str

    def to_document(self) -> dict[str, Any]:
        return asdict(self)


def migration_phase(flags: dict[str, Any], override: dict[str, Any], canary: dict[str, Any]) -> Phase:
    """The phase the flags in force, the override and the canary say the migration is in (the module's rule)."""
    if override.get("active"):
        if override.get("route") == "new":
            return Phase(4, "cut_over", "4 cut over (override: everything on new)")
        trigger = override.get("trigger") or {}
        if override.get("automatic") and trigger.get("name"):
            return Phase(None, "rolled_back", f"rolled back automatically: {trigger['name']} "
                                              f"{trigger.get('measured', 0):.4g} > {trigger.get('threshold', 0):g}")
        return Phase(None, "rolled_back", f"rolled back by an operator: {override.get('reason') or 'no reason'}")
    if not flags.get("use_new_storage"):
        return Phase(0, "old_only", "0 old only")
    shares = flags.get("traffic_percentage") or {}
    read, write = float(shares.get("read", 0.0)), float(shares.get("write", 0.0))
    if canary.get("active"):
        state, percentage = canary.get("state", ""), float(canary.get("percentage", 0.0))
        steps = canary.get("steps") or []
        if state == "rolled_back":
            return Phase(None, "rolled_back", f"rolled back: {canary.get('reason') or 'canary rolled back'}")
        if state == "done" and percentage >= 100:
            return Phase(4, "cut_over", "4 cut over (canary done at 100 %)")
        return Phase(2 if percentage <= 50 else 3, "canary",
                     f"canary step {int(canary.get('step', 0)) + 1} of {len(steps)} at {percentage:g} % ({state})")
    if read >= 100 and write >= 100:
        return Phase(4, "cut_over", "4 cut over (100 % on new)")
    top = max(read, write)
    if top > 0 or flags.get("enabled_for_keys") or flags.get("enabled_for_users"):
        return Phase(2 if top <= 50 else 3, "gradual",
                     f"{2 if top <= 50 else 3} gradual switchover at {read:g} % reads, {write:g} % writes")
    if flags.get("shadow_mode_enabled"):
        return Phase(1, "shadow", "1 shadow (old serves, new compared)")
    return Phase(0, "old_only", "0 old only (new wired, no traffic)")


# --- the series -------------------------------------------------------------------------------


def series(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The history's points as one list per line of a chart, oldest first."""
    def backend(name: str, figure: str) -> list[float]:
        return [float(p.get("backends", {}).get(name, {}).get(figure, 0.0)) for p in points]

    return {
        "time": [float(p["time"]) for p in points],
        "calls_per_second": {route: [float(p.get("served_per_second", {}).get(route, 0.0)) for p in points]
                             for route in BACKENDS},
        "error_rate": {name: backend(name, "error_rate") for name in BACKENDS},
        "latency": {name: {q: backend(name, q) for q in QUANTILES} for name in BACKENDS},
        "discrepancy_rate": [float(p.get("discrepancy_rate", 0.0)) for p in points],
        "discrepancy_bound": [float(p.get("discrepancy_bound_high", 0.0)) for p in points],
        "replication_depth": [int((p.get("replication") or {}).get("depth", 0)) for p in points],
        "replication_age": [float((p.get("replication") or {}).get("oldest_age_seconds", 0.0)) for p in points],
    }


def _now_figures(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest point's figures (the last few seconds), for the big numbers."""
    if not points:
        return {"time": None, "calls_per_second": 0.0, "by_route": {}, "backends": {}}
    last = points[-1]
    by_route = {route: float(n) for route, n in last.get("served_per_second", {}).items()}
    return {"time": last["time"], "calls_per_second": sum(by_route.values()), "by_route": by_route,
            "backends": last.get("backends", {})}


# --- coverage and comparison rules -------------------------------------------------------------


def _share(part: float | None, whole: float | None) -> float | None:
    return None if part is None or not whole else min(1.0, part / whole)


def coverage_view(coverage: dict[str, Any] | None) -> dict[str, Any]:
    """Status's coverage as the page draws it: one row per prefix with the keys the last verify counted,
    the share of them shadow mode compared (a lower bound when `at_least`) and the share the verify
    found equal, with when each was last; `note` says why shares are unknown when no verify counted keys."""
    doc = coverage or {}
    rows = []
    for row in doc.get("prefixes") or []:
        shadow, verified = row.get("shadow") or {}, row.get("verified") or {}
        keys = row.get("keys")
        rows.append({
            "prefix": row.get("prefix", ""), "keys": keys,
            "compared": shadow.get("compared", 0) if shadow else 0,
            "compared_at_most": shadow.get("compared_at_most", 0) if shadow else 0,
            # The figure is a lower bound: past the tracked-keys bound some comparisons were not told apart.
            "at_least": bool(shadow.get("at_least")) if shadow else False,
            "shadow_share": shadow.get("share") if shadow else None,
            "last_compared_unix": shadow.get("last_unix") if shadow else None,
            "verified": bool(verified),
            "agree": verified.get("agree") if verified else None,
            "differ": verified.get("differ") if verified else None,
            "verified_share": _share(verified.get("agree"), keys) if verified else None,
            "verified_unix": verified.get("at_unix") if verified else None,
        })
    if doc.get("verify_unix") is None:
        note = "no verify recorded: key counts, and so shares, are unknown (run `turnout verify`)"
    elif not doc.get("verify_has_prefixes"):
        note = "the last verify recorded no key counts by prefix: shares are unknown (run `turnout verify` again)"
    else:
        note = ""
    return {"prefixes": rows, "verify_unix": doc.get("verify_unix"),
            "shadow_since_unix": doc.get("shadow_since_unix"), "note": note}


def rules_view(rules: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Status's comparison rules as the page lists them; an expired one says whose it is to remove,
    since a rule nobody removes is how an ignore hides real differences for ever."""
    shown = []
    for rule in rules or []:
        expired = bool(rule.get("expired"))
        shown.append({
            "rule": rule.get("rule"), "keys": rule.get("keys", ""), "owner": rule.get("owner", ""),
            "expires": rule.get("expires", ""), "hits": int(rule.get("hits", 0)), "expired": expired,
            "ignore_fields": list(rule.get("ignore_fields") or []),
            "numeric_tolerance": rule.get("numeric_tolerance", 0.0), "reason": rule.get("reason", ""),
            "warning": (f"EXPIRED {rule.get('expires', '')}: no longer applies; owner {rule.get('owner', '')} "
                        f"should remove it") if expired else "",
        })
    return shown


# --- the whole document -----------------------------------------------------------------------


def _sample(doc: dict[str, Any]) -> dict[str, Any]:
    """A discrepancy as the page lists it: values only when they were recorded (as in /discrepancies.json)."""
    keep = {name: doc.get(name) for name in ("time", "key", "kind", "op", "route", "detail", "paths")}
    if doc.get("values"):
        keep.update(primary=doc.get("primary"), shadow=doc.get("shadow"))
    return keep


def rollbacks_document(counts: Counter[tuple[bool, str]], status: dict[str, Any]) -> dict[str, Any]:
    override = status.get("override") or {}
    return {
        "count": sum(counts.values()),
        "automatic": sum(n for (automatic, _), n in counts.items() if automatic),
        "by_trigger": [{"automatic": automatic, "trigger": trigger, "count": n}
                       for (automatic, trigger), n in sorted(counts.items())],
        "last": status.get("last_rollback"),
        # The trigger of the override in force: what was measured against what threshold.
        "trigger": override.get("trigger") if override.get("active") and override.get("automatic") else None,
    }


def build_document(status: dict[str, Any], points: list[dict[str, Any]], latest: list[dict[str, Any]],
                   jobs: dict[str, Any], rollbacks: dict[str, Any], serving: bool, now: float) -> dict[str, Any]:
    flags = status.get("flags") or {}
    override = status.get("override") or {}
    canary = status.get("canary") or {}
    health = status.get("health") or {}
    shadow = status.get("shadow") or {}
    window = health.get("window") or {}
    verify = jobs.get("verify") or {}
    last_verify = verify.get("last") or {}
    return {
        "time": now,
        "version": status.get("version", ""),
        "revision": (status.get("reload") or {}).get("revision", ""),
        "phase": migration_phase(flags, override, canary).to_document(),
        "traffic": {**(flags.get("traffic_percentage") or {"read": 0.0, "write": 0.0}),
                    "use_new_storage": bool(flags.get("use_new_storage")),
                    "shadow_mode_enabled": bool(flags.get("shadow_mode_enabled"))},
        "override": override,
        "canary": canary,
        "now": _now_figures(points),
        "series": series(points),
        "discrepancies": {
            "compared": shadow.get("compared", 0), "total": shadow.get("discrepancies", 0),
            "rate": shadow.get("rate", 0.0), "by_kind": shadow.get("by_kind", {}),
            "window": window.get("discrepancies", {}),
            "latest": [_sample(d) for d in reversed(latest)],
        },
        "replication": status.get("replication", {}),
        "jobs": jobs,
        "rollbacks": rollbacks,
        "health": {
            "serving": serving,
            "backends": status.get("backends", []),
            "workers": status.get("workers", []),
            "writes": status.get("writes", {}),
            "evaluation": health.get("evaluation", {}),
            "guard_failures": health.get("failures", 0),
        },
        "confidence": confidence(evidence(status, last_verify.get("clean") if last_verify else None)),
        "coverage": coverage_view(status.get("coverage")),
        "comparison_rules": rules_view(shadow.get("comparison_rules")),
    }


def jobs_document(state: AdminState) -> dict[str, Any]:
    """Migrate and verify: the run in this proxy (running or last), the migrate checkpoint and the last
    verify's outcome in state_dir (which offline runs leave too)."""
    board = job_board(state.state_dir).latest
    verify, age = statedir.last_verify(state.state_dir)
    return {
        "migrate": {"run": board["migrate"].to_document() if "migrate" in board else None,
                    "checkpoint": statedir.read_json(state.state_dir / CHECKPOINT_FILE)},
        "verify": {"run": board["verify"].to_document() if "verify" in board else None,
                   "last": None if verify is None else {"clean": verify.get("clean"), "age_seconds": age,
                                                        **{n: verify.get(n) for n in ("old_records", "new_records",
                                                                                      "missing", "different",
                                                                                      "extra", "repaired")}}},
    }


async def dashboard_document(state: AdminState) -> dict[str, Any]:
    """What /dashboard.json answers."""
    now = time.time()
    status = status_document(await proxy_status(state))
    guard = state.guard
    points = guard.history.points(now - SERIES_S) if guard is not None else []
    plane = state.plane
    latest = plane.snapshot().discrepancies.to_document()["latest"] if plane is not None else []
    return build_document(status, points, latest, jobs_document(state), rollbacks_document(state.rollbacks, status),
                          state.healthy(), now)
