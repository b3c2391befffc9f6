"""`turnout discrepancies [--since T]`: what shadow mode found, from the log in state_dir.

The log is read directly, so the report works with the proxy stopped. The log also carries the
counts of compared operations, so the rate (discrepancies over compared operations) covers the same
window as the totals, across restarts and with `--since`. A running proxy writes its counts at least
once a second. Samples show each side's size, digest and the JSON paths that differ, and the
documents themselves only when the proxy recorded them (`discrepancies.record_values`).
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import datetime
from typing import Any

from proxy.commands.common import add_config_argument, add_json_argument, emit, load
from proxy.data.discrepancies import Discrepancy, report_from_log

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


def run(args: argparse.Namespace) -> int:
    config = load(args)
    report = report_from_log(config.state_dir, args.since)
    doc = report.to_document()
    doc["since"] = args.since
    lines = [f"{report.total} discrepancies" + (f" since {datetime.fromtimestamp(args.since).isoformat()}"
                                                if args.since else "")]
    if doc["compared"]:
        lines[0] += f" in {doc['compared']} compared operations (rate {report.rate:.4%})"
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
