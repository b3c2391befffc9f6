"""`turnout status` and `turnout resume`: an operator's view and hand on a running proxy."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import grpc
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy.admin.documents import message_document, status_document
from proxy.commands.common import add_config_argument, add_json_argument, emit, load
from proxy.control.adminclient import admin_channel, admin_target
from proxy.errors import BackendUnavailable
from proxy.safety.wilson import wilson


def register(subparsers: Any) -> None:
    status = subparsers.add_parser("status", help="flags in force, reload health, overrides, replication, backends")
    add_config_argument(status)
    add_json_argument(status)
    status.add_argument("--records", action="store_true",
                        help="also count each backend's records and checksum its contents (scans both)")
    status.set_defaults(func=show_status)

    resume = subparsers.add_parser("resume", help="clear an override: the flag file decides again")
    add_config_argument(resume)
    add_json_argument(resume)
    resume.set_defaults(func=resume_flags)


def _admin(args: argparse.Namespace) -> tuple[admin_pb2_grpc.AdminStub, grpc.Channel, str]:
    config = load(args)
    target = admin_target(config)
    channel = admin_channel(config, target)
    return admin_pb2_grpc.AdminStub(channel), channel, target


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    stub, channel, target = _admin(args)
    try:
        return getattr(stub, method)(request, timeout=5)
    except grpc.RpcError as exc:
        detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if isinstance(exc, grpc.Call) and exc.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                                          grpc.StatusCode.FAILED_PRECONDITION,
                                                          grpc.StatusCode.INVALID_ARGUMENT):
            raise BackendUnavailable(f"the admin API at {target} refused the call: {detail}") from None
        raise BackendUnavailable(f"no running proxy answered at {target}: {detail}") from None
    finally:
        channel.close()


def _age(unix: float) -> str:
    return "never" if not unix else f"{time.time() - unix:.1f}s ago"


def show_status(args: argparse.Namespace) -> int:
    reply: admin_pb2.StatusResponse = _call(args, "Status", admin_pb2.StatusRequest(records=args.records))
    doc = status_document(reply)
    lines = [
        f"turnout {reply.version}, up {time.time() - reply.started_unix:.0f}s",
        f"flags: revision {reply.reload.revision!r} from {reply.reload.path}",
        f"  last reload attempt {_age(reply.reload.last_attempt_unix)}, last success "
        f"{_age(reply.reload.last_success_unix)}, failures {reply.reload.failures}",
    ]
    if reply.reload.last_error:
        lines.append(f"  LAST RELOAD FAILED: {reply.reload.last_error}")
    if reply.override.active:
        kind = "AUTOMATIC ROLLBACK" if reply.override.automatic else "override"
        lines.append(f"{kind}: everything to {reply.override.route} ({reply.override.reason}, "
                     f"since {_age(reply.override.since_unix)}); `turnout resume` clears it")
    else:
        lines.append("override: none")
    lines += _safety_lines(reply, doc)
    rep = reply.replication
    last = f" (last: {rep.last_error})" if rep.last_error else ""
    lines.append(f"replication: {rep.depth} pending, oldest {rep.oldest_age_seconds:.1f}s, "
                 f"{rep.replayed} replayed, {rep.failures} failures{last}")
    shadow = doc["shadow"]
    if shadow.get("compared"):
        bound = wilson(shadow["discrepancies"], shadow["compared"])
        lines.append(f"shadow: {shadow['discrepancies']} discrepancies in {shadow['compared']} compared "
                     f"(rate {shadow['rate']:.4%}, 95 % interval {bound.low:.4%} to {bound.high:.4%}) "
                     f"{shadow['by_kind']}")
    for op, routes in shadow.get("operations", {}).items():
        lines.append(f"operations {op}: " + ", ".join(f"{route} {n}" for route, n in routes.items()))
    for backend_name, ops in shadow.get("latency", {}).items():
        for op, q in ops.items():
            lines.append(f"latency {backend_name} {op}: p50 {q['p50'] * 1000:.2f} ms, p95 {q['p95'] * 1000:.2f} ms, "
                         f"p99 {q['p99'] * 1000:.2f} ms over {q['count']} calls, {q['errors']} errors")
    lines += _rule_lines(shadow.get("comparison_rules", [])) + _coverage_lines(doc["coverage"])
    for backend_name, summary in shadow.get("records", {}).items():
        lines.append(f"records {backend_name}: {summary['records']}, checksum {summary['checksum']}")
    if reply.writes.paused:
        lease = (f" (lease runs out in {reply.writes.lease_expires_unix - time.time():.1f}s)"
                 if reply.writes.lease_expires_unix else "")
        lines.append(f"WRITES PAUSED: {reply.writes.reason}{lease}")
    if reply.writes.leases_expired:
        lines.append(f"writes resumed by the proxy {reply.writes.leases_expired} time(s): a pause lease ran out "
                     f"(last {_age(reply.writes.last_lease_expired_unix)}: {reply.writes.last_lease_expired_reason})")
    if reply.last_rollback.time_unix:
        rollback = reply.last_rollback
        kind = "automatic" if rollback.automatic else "operator"
        lines.append(f"last rollback ({kind}, {_age(rollback.time_unix)}): {rollback.reason}: "
                     f"{'ok' if rollback.ok else 'FAILED'}" + (f", {rollback.detail}" if rollback.detail else ""))
    for backend in reply.backends:
        state = "healthy" if backend.healthy else f"FAILING: {backend.error}"
        lines.append(f"backend {backend.name}: {backend.type}, {state}")
    for worker in reply.workers:
        lines.append(_worker_line(worker))
    lines.append("effective flags: " + json.dumps(doc["flags"]))
    emit(args, doc, "\n".join(lines))
    return 0


def _safety_lines(reply: admin_pb2.StatusResponse, doc: dict[str, Any]) -> list[str]:
    """The canary and the health window the guard judged, as `turnout status` prints them."""
    lines: list[str] = []
    canary = reply.canary
    if canary.active:
        steps = ", ".join(f"{step:g}" for step in canary.steps)
        lines.append(f"canary: step {canary.step + 1} of {len(canary.steps)} ({canary.percentage:g} %, steps "
                     f"[{steps}]), {canary.state}" + (f": {canary.reason}" if canary.reason else ""))
    health = doc.get("health") or {}
    window, evaluation = health.get("window"), health.get("evaluation")
    if window and evaluation:
        tripped = [t["name"] for t in evaluation["triggers"] if t["verdict"] == "tripped"]
        verdict = (f"TRIPPED ({', '.join(tripped)})" if tripped else "healthy" if evaluation["healthy"] else
                   "INCONCLUSIVE (too few calls of new)" if not evaluation["conclusive"] else
                   "not yet healthy (a trigger is inconclusive)")
        lines.append(f"health window ({window['seconds']:.0f}s of {evaluation['window_seconds']:.0f}s): {verdict}, "
                     f"{evaluation['new_calls']} calls of new (min_calls {evaluation['min_calls']})")
        for name, figures in sorted(window["backends"].items()):
            all_ops = figures["all"]
            lines.append(f"  {name}: {all_ops['calls']} calls, {all_ops['error_rate']:.2%} failed, "
                         f"p50 {all_ops['p50'] * 1000:.2f} ms, p99 {all_ops['p99'] * 1000:.2f} ms, "
                         f"{all_ops['throughput']:.1f}/s")
        d = window["discrepancies"]
        lines.append(f"  discrepancies: {d['discrepancies']} in {d['compared']} compared (rate {d['rate']:.4%}, "
                     f"95 % interval {d['bound_low']:.4%} to {d['bound_high']:.4%})")
        for trigger in evaluation["triggers"]:
            measured = "-" if trigger["measured"] is None else f"{trigger['measured']:.4g}"
            lines.append(f"  trigger {trigger['name']}: {trigger['verdict']} ({measured} vs threshold "
                         f"{trigger['threshold']:g}; {trigger['detail']})")
    return lines


def _rule_lines(rules: list[dict[str, Any]]) -> list[str]:
    """Each comparison rule with its hits; an expired one loudly, with its owner, so someone removes it."""
    lines = []
    for rule in rules:
        what = ", ".join(filter(None, (
            f"ignores {', '.join(rule['ignore_fields'])}" if rule.get("ignore_fields") else "",
            f"tolerance {rule['numeric_tolerance']:g}" if rule.get("numeric_tolerance") else "")))
        state = (f"EXPIRED on {rule['expires']}: no longer applied, owner {rule['owner']} should remove it"
                 if rule["expired"] else f"owner {rule['owner']}, expires {rule['expires']}")
        lines.append(f"comparison rule {rule['rule']} ({rule['keys']!r}: {what}): {rule['hits']} hits; {state}")
    return lines


def _coverage_lines(coverage: dict[str, Any] | None) -> list[str]:
    """Key-space coverage by prefix: the last verify's keys, and the share compared in shadow mode."""
    if not coverage or not coverage.get("prefixes"):
        return []
    verified = coverage.get("verify_unix")
    source = (f"keys as counted by the verify {_age(verified)}" if verified and coverage.get("verify_has_prefixes")
              else "no verify recorded with key counts: run `turnout verify` for the shares")
    lines = [f"coverage by prefix ({source}):"]
    for row in coverage["prefixes"]:
        parts = [f"{row['keys']} keys" if row["keys"] is not None else "keys unknown"]
        if row["verified"] is not None:
            parts.append(f"verified {_age(row['verified']['at_unix'] or 0)} ({row['verified']['agree']} agree, "
                         f"{row['verified']['differ']} differ)")
        shadow = row["shadow"]
        if shadow is not None:
            share = "" if shadow["share"] is None else f" ({shadow['share']:.1%})"
            bound = "at least " if shadow["at_least"] else ""
            parts.append(f"{bound}{shadow['compared']} compared in shadow{share}, "
                         f"last {_age(shadow['last_unix'] or 0)}")
        lines.append(f"  {row['prefix'] or '(no prefix)'}: " + ", ".join(parts))
    return lines


def _worker_line(worker: admin_pb2.WorkerState) -> str:
    """One worker of a proxy serving with --workers N, as worker 0 saw it."""
    where = f" at {worker.admin_address}" if worker.admin_address else ""
    if not worker.reachable:
        return f"worker {worker.index}{where}: UNREACHABLE: {worker.error}"
    state = "serving" if worker.serving else "not serving yet"
    paused = ", WRITES PAUSED" if worker.writes_paused else ""
    return (f"worker {worker.index}{where}: pid {worker.pid}, {state}, {worker.operations} operations, "
            f"{worker.replication_depth} pending replication, flags {worker.flags_revision!r}{paused}")


def resume_flags(args: argparse.Namespace) -> int:
    reply = _call(args, "ClearOverride", admin_pb2.ClearOverrideRequest())
    emit(args, message_document(reply),
         "override cleared: the flag file decides again")
    return 0
