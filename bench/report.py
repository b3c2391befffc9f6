"""Printing and saving benchmark figures: a table for people, JSON for tools, ratios to a baseline."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

Case = TypeVar("Case", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Figure:
    case: str
    value: float
    unit: str
    baseline: str | None = None
    ratio: float | None = None
    target: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        return None if self.target is None or self.ratio is None else self.ratio >= self.target


def with_ratio(figure: Figure, baseline: Figure, target: float | None = None) -> Figure:
    return Figure(figure.case, figure.value, figure.unit, baseline.case, figure.value / baseline.value, target,
                  figure.extra)


def add_round_options(parser: argparse.ArgumentParser) -> None:
    """--rounds (how many times every case is measured) and --json (where the figures also go)."""
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")


def chosen_stores(parser: argparse.ArgumentParser, option: str, known: Sequence[str]) -> list[str]:
    """The store names of a comma-separated --stores option, in the order given. A name not in
    `known` is a usage error, and a run wanting Redis without redis-server installed stops at once
    with what to install, before it starts any server."""
    wanted = [name.strip() for name in option.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        parser.error(f"unknown store(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if "redis" in wanted and shutil.which("redis-server") is None:
        sys.exit("redis-server is missing: install the Debian package redis-server")
    return wanted


def best_of_rounds(rounds: int, cases: Sequence[Case], measure: Callable[[Case], float]) -> dict[Case, float]:
    """Each case's highest figure over `rounds` rounds (0.0 when there are none), since other work on a
    shared machine only ever takes from it. Each round measures every case in turn, so the cases are
    interleaved and a noisy moment hits one round of each."""
    best = dict.fromkeys(cases, 0.0)
    for _ in range(rounds):
        for case in cases:
            best[case] = max(best[case], measure(case))
    return best


def machine() -> dict[str, str | int]:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count() or 0}


def print_table(title: str, figures: Sequence[Figure]) -> None:
    print(f"\n{title}  ({machine()['cpus']} cores, Python {machine()['python']})")
    print(f"{'case':<44} {'value':>12} {'unit':<8} {'ratio':>8}  {'vs':<28} target")
    for f in figures:
        ratio = "" if f.ratio is None else f"{f.ratio:8.2f}"
        verdict = "" if f.met is None else ("met" if f.met else "NOT met")
        target = "" if f.target is None else f">= {f.target:g} {verdict}"
        print(f"{f.case:<44} {f.value:12.1f} {f.unit:<8} {ratio:>8}  {f.baseline or '':<28} {target}")


def save(path: Path | None, name: str, figures: Sequence[Figure]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
           "figures": [asdict(f) | {"met": f.met} for f in figures]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
