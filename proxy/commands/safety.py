"""`turnout checkpoint` and `turnout canary`: the plan's go/no-go checkpoints and the canary's steps, as
the running proxy judges them from its measured figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from turnout.admin.v1 import admin_pb2

from proxy.admin.documents import message_document
from proxy.commands.common import add_config_argument, add_json_argument, emit
from proxy.commands.operate import _call
from proxy.errors import TurnoutError

CANARY_ACTIONS = ("hold", "promote", "abort")


def register(subparsers: Any) -> None:
    checkpoint = subparsers.add_parser(
        "checkpoint", help="the plan's go/no-go checkpoints from measured figures (exit 0 only when all go)")
    add_config_argument(checkpoint)
    add_json_argument(checkpoint)
    checkpoint.set_defaults(func=show_checkpoints)

    canary = subparsers.add_parser("canary", help="show the canary's step, or hold, promote or abort it")
    canary.add_argument("action", nargs="?", choices=CANARY_ACTIONS,
                        help="hold: stay on this step until promote; promote: go to the next step now; "
                             "abort: everything to old until `turnout resume` (none: show)")
    canary.add_argument("--reason", default="", help="why, shown in status and the canary's state")
    add_config_argument(canary)
    add_json_argument(canary)
    canary.set_defaults(func=canary_command)


def parse_report(reply: admin_pb2.CheckpointReport) -> dict[str, Any]:
    """The report's document; a TurnoutError when the proxy sent none a reader could trust."""
    try:
        doc = json.loads(reply.report_json)
    except ValueError:
        raise TurnoutError(f"the proxy's checkpoint report is no JSON document: {reply.report_json[:80]!r}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("checkpoints"), list):
        raise TurnoutError("the proxy's checkpoint report has no list of checkpoints")
    return doc


def is_go(reply: admin_pb2.CheckpointReport, doc: dict[str, Any]) -> bool:
    # Both the message and its document must say go: a report that disagrees with itself is no go.
    return bool(reply.go) and doc.get("go") is True and all(c.get("verdict") == "go" for c in doc["checkpoints"])


def show_checkpoints(args: argparse.Namespace) -> int:
    reply: admin_pb2.CheckpointReport = _call(args, "Checkpoint", admin_pb2.CheckpointRequest())
    doc = parse_report(reply)
    if args.json:
        # As the proxy wrote it: a script reads the very document the proxy judged.
        sys.stdout.write(reply.report_json.strip() + "\n")
    else:
        print(format_checkpoints(doc))
    return 0 if is_go(reply, doc) else 1


def format_checkpoints(doc: dict[str, Any]) -> str:
    """A table: each checkpoint's name, verdict, what was measured against what it must meet, and why."""
    rows = [(str(c.get("name", "?")), str(c.get("verdict", "?")).upper(),
             f"{format_figure(c.get('measured'))} vs {format_figure(c.get('threshold'))}", str(c.get("detail", "")))
            for c in doc["checkpoints"]]
    name_w = max([len("CHECKPOINT"), *(len(r[0]) for r in rows)])
    verdict_w = max([len("VERDICT"), *(len(r[1]) for r in rows)])
    lines = [f"{'CHECKPOINT':<{name_w}}  {'VERDICT':<{verdict_w}}  MEASURED vs THRESHOLD"]
    for name, verdict, figures, detail in rows:
        lines.append(f"{name:<{name_w}}  {verdict:<{verdict_w}}  {figures}")
        if detail:
            lines.append(f"{'':<{name_w}}  {'':<{verdict_w}}  {detail}")
    lines.append("overall: " + ("GO" if doc.get("go") is True else "NO-GO"))
    return "\n".join(lines)


def format_figure(value: Any) -> str:
    """A measured value or threshold in a line: numbers short, small dicts as key=value. Nested parts
    are left to --json, except in a dict that is only a breakdown (feature parity's per operation)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        breakdown = bool(value) and all(isinstance(v, dict) for v in value.values())
        parts = [f"{k}={format_figure(v)}" for k, v in value.items() if breakdown or not isinstance(v, dict | list)]
        return "{" + ", ".join(parts) + "}"
    return str(value)


def canary_command(args: argparse.Namespace) -> int:
    action = args.action or ""
    reason = args.reason or (f"turnout canary {action}" if action else "")
    reply: admin_pb2.CanaryState = _call(args, "Canary", admin_pb2.CanaryRequest(action=action, reason=reason))
    emit(args, message_document(reply), format_canary(reply, action))
    # Stepping in on a canary the flag file does not have did nothing: not what was asked.
    return 0 if reply.active or not action else 1


def format_canary(state: admin_pb2.CanaryState, action: str = "") -> str:
    if not state.active:
        return ("no canary: the flag file has no `canary`" + (f", nothing to {action}" if action else "")
                + "; the percentages are traffic_percentage's")
    steps = ", ".join(f"{s:g}" for s in state.steps)
    position = f"step {state.step + 1} of {len(state.steps)}" if state.steps else f"step {state.step + 1}"
    since = f", since {time.time() - state.since_unix:.0f}s ago" if state.since_unix else ""
    lines = [
        (f"{action}: done. " if action else "") + f"canary {state.state}: {position} at {state.percentage:g} %{since}",
        f"steps: [{steps}] %, each held {state.interval_seconds:g}s",
    ]
    if state.operator_hold:
        lines.append("held by an operator (`turnout canary promote` to go on)")
    if state.reason:
        lines.append(f"reason: {state.reason}")
    return "\n".join(lines)
