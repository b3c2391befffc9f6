"""`turnout discrepancies [--since T]`: what shadow mode found, from the log in state_dir; and
`turnout discrepancies show KEY`: the key's triage records.

The log is read directly, so the report works with the proxy stopped. The log also carries the
counts of compared operations, so the rate (discrepancies over compared operations) covers the same
window as the totals, across restarts and with `--since`. A running proxy writes its counts at least
once a second. Samples show each side's size, digest and the JSON paths that differ, and the
documents themselves only when the proxy recorded them (`discrepancies.record_values`). Keys the
backfill had not reached yet are no discrepancy: the report counts them apart as `not_migrated`
(proxy.data.backfill).

A triage record (`show KEY`) is each logged discrepancy of the key, from every worker's log, with the
routing decision (primary, secondary, reason, bucket, flags revision), the trace id, both sides (the
documents when recorded, else their sizes, digests and the JSON paths that differ) and the key's
recent writes as the replication queue saw them (proxy.data.triage).
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

from proxy.commands.common import add_config_argument, add_json_argument, emit, load
from proxy.data.discrepancies import Discrepancy, records_of, report_from_log

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """Unix seconds from `1732400000`, `2026-11-24T09:00:00Z` or a relative `15m` / `2h` / `1d`."""
    now = time.time() if now is None else now
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        message = f"--since: not a time: {text!r} (use 15m, 2h, unix seconds or ISO 8601)"
        raise argparse.ArgumentTypeError(message) from None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("discrepancies", help="what shadow mode found: totals, kinds, samples")
    parser.add_argument("--since", type=parse_since, default=0.0, help="only from this time on (15m, 2h, ISO 8601)")
    add_config_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser("show", help="a key's triage records: decision, trace, both sides, recent writes",
                              description="Print every logged discrepancy of KEY with what triage needs.")
    show.add_argument("key")
    # SUPPRESS: an option given before `show` (turnout discrepancies --json show K) is not reset here.
    show.add_argument("--since", type=parse_since, default=argparse.SUPPRESS,
                      help="only from this time on (15m, 2h, ISO 8601)")
    show.add_argument("--config", default=argparse.SUPPRESS,
                      help="server config (default config/turnout.yaml or $TURNOUT_CONFIG)")
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print a machine-readable result")
    show.set_defaults(func=run_show)


def run(args: argparse.Namespace) -> int:
    config = load(args)
    report = report_from_log(config.state_dir, args.since)
    doc = report.to_document()
    doc["since"] = args.since
    lines = [f"{report.total} discrepancies" + (f" since {datetime.fromtimestamp(args.since).isoformat()}"
                                                if args.since else "")]
    if doc["compared"]:
        lines[0] += (f" in {doc['compared']} compared operations (rate {report.rate:.4%}, 95 % interval "
                     f"{doc['rate_bound_low']:.4%} to {doc['rate_bound_high']:.4%})")
    if report.not_migrated:
        lines.append(f"  not migrated yet (the backfill had not reached the key; no discrepancy): "
                     f"{doc['not_migrated']}")
    lines += [f"  {kind}: {n}" for kind, n in sorted(report.by_kind.items())]
    lines += [f"  op {op}: {n}" for op, n in sorted(report.by_op.items())]
    for title, samples in (("first", report.first), ("latest", list(report.latest))):
        if samples:
            lines.append(f"{title}:")
            lines += [sample_line(d) for d in samples]
    emit(args, doc, "\n".join(lines))
    return 0


def sample_line(d: Discrepancy) -> str:
    """One sample for triage: each side's document as recorded (its text only when values were
    recorded; its size and digest either way), and the JSON paths that differ."""
    line = (f"  {datetime.fromtimestamp(d.time).isoformat(timespec='seconds')} {d.op} {d.key!r} {d.kind}: "
            f"primary({d.route})={_side(d.primary, d.primary_size, d.primary_digest)} "
            f"shadow={_side(d.shadow, d.shadow_size, d.shadow_digest)}")
    if d.paths:
        line += f" differ at {', '.join(d.paths)}{' ...' if d.paths_truncated else ''}"
    if not d.values:
        line += " (values not recorded)"
    return f"{line} {d.detail} [flags {d.revision}]".replace("  [flags", " [flags")


def _side(shown: str | None, size: int | None, digest: str | None) -> str:
    if size is None:
        return str(shown)  # no document: absent (None), or an answer that is none (a Has's presence)
    summary = f"{size} bytes sha256:{digest}"
    return summary if shown is None else f"{shown} ({summary})"


def run_show(args: argparse.Namespace) -> int:
    config = load(args)
    records = records_of(config.state_dir, args.key, args.since)
    doc = {"key": args.key, "since": args.since, "count": len(records), "records": [asdict(d) for d in records]}
    lines = [f"{len(records)} discrepancies of {args.key!r}" + (
        f" since {datetime.fromtimestamp(args.since).isoformat()}" if args.since else "")]
    for d in records:
        lines += triage_lines(d)
    emit(args, doc, "\n".join(lines))
    return 0


def triage_lines(d: Discrepancy) -> list[str]:
    """One record for triage, as text: what was compared, how it was routed, both sides, recent writes."""
    lines = [f"{datetime.fromtimestamp(d.time).isoformat(timespec='milliseconds')} {d.op} {d.kind}",
             f"  route: primary {d.route}, shadow {d.secondary or '?'}, reason {d.reason or '?'}, "
             f"bucket {'?' if d.bucket is None else d.bucket}, flags {d.revision}",
             f"  trace: {d.trace_id or '(none: the call was not traced)'}",
             f"  primary: {_side(d.primary, d.primary_size, d.primary_digest)}",
             f"  shadow:  {_side(d.shadow, d.shadow_size, d.shadow_digest)}"]
    if d.paths:
        lines.append(f"  differ at: {', '.join(d.paths)}{' ...' if d.paths_truncated else ''}")
    if not d.values:
        lines.append("  (values not recorded: discrepancies.record_values is off)")
    if d.detail:
        lines.append(f"  detail: {d.detail}")
    if d.writes:
        lines.append("  recent writes (as the replication queue saw them, oldest first):")
        lines += [f"    {datetime.fromtimestamp(float(w.get('time', 0))).isoformat(timespec='milliseconds')} "
                  f"{w.get('op')} {w.get('source')}->{w.get('target')} {w.get('state')}" for w in d.writes]
    else:
        lines.append("  recent writes: none through this proxy (since it started, in the worker that found it)")
    return lines
