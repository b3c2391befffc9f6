"""`turnout cutover` and `turnout rollback`: switch a running proxy to new, or bring it back to old."""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Any

from proxy import statedir
from proxy.commands.common import add_config_argument, add_json_argument, emit, load, positive_seconds
from proxy.config import Config
from proxy.control.adminclient import admin_stub, admin_target, follow
from proxy.control.cutover import cutover
from proxy.control.lease import PAUSE_LEASE_S
from proxy.control.report import Report, StepFailed, record_incident, summary
from proxy.control.rollback import check_old_holds_new, rollback
from proxy.errors import BackendUnavailable
from proxy.migration.stores import open_offline
from proxy.migration.verify import verify
from proxy.routing.router import Route
from proxy.safety.hookspec import Event
from proxy.statedir import OVERRIDE_FILE
from proxy.telemetry.tracing import Telemetry


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cutover", help="pause writes, sync, verify, switch to new, watch health; rolls back on failure"
    )
    parser.add_argument("--monitor", type=float, default=30.0, metavar="SECONDS", help="health watch after the switch")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check every gate, change nothing")
    parser.add_argument("--reason", default="cutover")
    parser.add_argument("--pause-lease", type=positive_seconds, default=PAUSE_LEASE_S, metavar="SECONDS",
                        help="the proxy resumes writes by itself if the cutover stops renewing its pause this long "
                             f"(renewed every quarter of it; default {PAUSE_LEASE_S:g})")
    add_config_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(func=run_cutover)

    parser = subparsers.add_parser("rollback", help="everything to old, sync back what only new has, verify old")
    parser.add_argument("--reason", default="operator rollback")
    add_config_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(func=run_rollback)


def run_cutover(args: argparse.Namespace) -> int:
    config = load(args)
    found = admin_stub(config)
    if found is None:
        raise BackendUnavailable(f"cutover needs the running proxy; none answered at {admin_target(config)}")
    stub, channel = found
    if not args.dry_run:
        _fire_hooks(config, "cutover_start", {"dry_run": False})
    # A SIGTERM mid-cutover must not leave writes paused: it rolls back like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with channel:
            report = cutover(stub, config.state_dir, follow, args.monitor, args.dry_run, args.reason,
                                   args.pause_lease)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not args.dry_run and not report.ok:
        record_incident(config.state_dir, args.reason, report)
    document = report.to_document()
    emit(args, document, summary(report))
    if not args.dry_run:  # after the report is out: a slow hook never holds it back
        _fire_hooks(config, "cutover_end", {"ok": report.ok, "steps": document["steps"],
                                            "rolled_back": report.rolled_back})
    return 0 if report.ok else 1


def _fire_hooks(config: Config, event: Event, document: dict[str, Any]) -> None:
    """The config's hooks for event, each within its timeout; a failing hook is logged, never raised."""
    if not any(event in hook.on for hook in config.hooks):
        return
    from proxy.safety.hooks import Hooks  # aiohttp only when there is a hook to send to

    asyncio.run(Hooks(config.hooks).fire(event, document))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_rollback(args: argparse.Namespace) -> int:
    config = load(args)
    found = admin_stub(config)
    if found is not None:
        stub, channel = found
        with channel:
            report = rollback(stub, config.state_dir, follow, args.reason)
    else:
        report = asyncio.run(_rollback_offline(config, args.reason))
    emit(args, report.to_document(), summary(report))
    return 0 if report.ok else 1


async def _rollback_offline(config: Config, reason: str) -> Report:
    """No proxy running: persist the override for its next start, then sync old from new directly."""
    report = Report("rollback")
    try:
        with report.step("route everything to old (for the next start)"):
            statedir.write_json(config.state_dir / OVERRIDE_FILE, {"route": "old", "reason": reason,
                                                                    "since": time.time()})
        async with open_offline(config) as stores:
            with report.step("sync back what only new has") as step:
                result = await verify(stores, fix=True, truth=Route.NEW)
                step.detail = f"{result.repaired} keys copied from new"
            with report.step("verify old") as step:
                check_old_holds_new((await verify(stores)).to_document(), step)
    except StepFailed:
        pass
    incident = record_incident(config.state_dir, reason, report)
    # No proxy to record it: the span leaves from here, when tracing is configured.
    telemetry = Telemetry.from_env()
    telemetry.rollback(reason, report.ok, False, report.outcome("offline"), str(incident))
    telemetry.shutdown()
    return report
