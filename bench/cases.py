"""The benchmark's cases: which server runs how, which call loads it, and what its figure is read against.

A new case is a new entry in CASES (and, if it needs one, a new entry in SERVERS): run.py knows
nothing about particular cases. Cases that share a server run one after another on one start of it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MEMORY: Mapping[str, Any] = {"type": "memory"}
JSONFILE: Mapping[str, Any] = {"type": "jsonfile", "path": "legacy.json"}
SQLITE: Mapping[str, Any] = {"type": "sqlite", "path": "new.sqlite"}
SQLITE_OLD: Mapping[str, Any] = {"type": "sqlite", "path": "old.sqlite"}
#: Connections for the --workers cases: the kernel spreads connections, not calls, over the workers,
#: and four connections land all on one of two workers one time in eight.
WORKERS_CONNECTIONS = 16

#: Tracing cases export to the console (the server's stdout is /dev/null), so span creation and
#: export are paid without a collector; set OTEL_TRACES_EXPORTER yourself to export elsewhere.
TRACE_EXPORT_DEFAULTS: Mapping[str, str] = {"OTEL_TRACES_EXPORTER": "console"}


@dataclass(frozen=True, slots=True)
class Server:
    """How to start one server under test."""

    name: str
    kind: str  # "floor": bench/floor_server.py; "proxy": `python -m proxy.cli serve`
    old: Mapping[str, Any] = field(default_factory=lambda: MEMORY)
    new: Mapping[str, Any] = field(default_factory=lambda: MEMORY)
    flags: Mapping[str, Any] = field(default_factory=dict)  # the flag file's contents
    env: Mapping[str, str] = field(default_factory=dict)  # set over the caller's environment
    env_defaults: Mapping[str, str] = field(default_factory=dict)  # set unless the caller set them
    needs: tuple[str, ...] = ()  # modules that must exist, else the server's cases are skipped
    workers: int = 1  # `turnout serve --workers N`

    def missing(self) -> list[str]:
        """The modules this server needs that are not there (yet)."""
        return [module for module in self.needs if importlib.util.find_spec(module) is None]


@dataclass(frozen=True, slots=True)
class Case:
    """One measurement: a call loaded on a server, read as a ratio to a baseline case of the same run."""

    name: str
    server: str  # a Server.name
    op: str  # "Get" or "Set"
    baseline: str | None = None  # the case whose requests/s this one's is divided by
    target_ratio: float | None = None  # at least this ratio to the baseline
    #: Rate-limited: run at this fraction of the baseline's measured requests/s instead of flat out.
    rate_fraction: float | None = None
    target_p99_ms: float | None = None
    connections: int | None = None  # HTTP/2 connections, when not the run's --connections


def _proxy(name: str, **fields: Any) -> Server:
    return Server(name, "proxy", **fields)


def _traced(name: str, sampler: str, arg: str | None = None) -> Server:
    env = {"OTEL_TRACES_SAMPLER": sampler} | ({"OTEL_TRACES_SAMPLER_ARG": arg} if arg is not None else {})
    return _proxy(name, env=env, env_defaults=TRACE_EXPORT_DEFAULTS)


SERVERS: tuple[Server, ...] = (
    Server("floor", "floor"),
    _proxy("proxy-memory"),  # default flags: every call routed to old
    _proxy("proxy-jsonfile", old=JSONFILE, new=SQLITE, needs=("proxy.backends.jsonfile",)),
    _proxy(
        "proxy-sqlite",
        old=JSONFILE,
        new=SQLITE,
        flags={"use_new_storage": True, "traffic_percentage": {"read": 100, "write": 100}},
        needs=("proxy.backends.jsonfile", "proxy.backends.sqlite"),
    ),
    _proxy("proxy-memory-shadow", flags={"use_new_storage": True, "shadow_mode_enabled": True}),
    _proxy("proxy-memory-split", flags={"use_new_storage": True, "traffic_percentage": {"read": 50, "write": 50}}),
    _traced("proxy-memory-trace-off", "always_off"),
    _traced("proxy-memory-trace-ratio", "parentbased_traceidratio", "0.01"),
    _traced("proxy-memory-trace-on", "always_on"),
    # Both stores SQLite, which several processes can share: one worker against two.
    _proxy("proxy-sqlite-1-worker", old=SQLITE_OLD, new=SQLITE, needs=("proxy.backends.sqlite",)),
    _proxy("proxy-sqlite-2-workers", old=SQLITE_OLD, new=SQLITE, workers=2, needs=("proxy.backends.sqlite",)),
)

CASES: tuple[Case, ...] = (
    Case("floor-get", "floor", "Get"),
    Case("floor-set", "floor", "Set"),
    # The floor's own latency at half its peak, to read the proxy's against.
    Case("floor-get-half-peak", "floor", "Get", baseline="floor-get", rate_fraction=0.5),
    # Issue 12 raised the proxy's target from 0.85 to 0.90 of the floor.
    Case("proxy-memory-get", "proxy-memory", "Get", baseline="floor-get", target_ratio=0.90),
    Case("proxy-memory-set", "proxy-memory", "Set", baseline="floor-set", target_ratio=0.90),
    Case("proxy-memory-get-half-peak", "proxy-memory", "Get", baseline="proxy-memory-get", rate_fraction=0.5,
         target_p99_ms=2.0),
    Case("proxy-jsonfile-get", "proxy-jsonfile", "Get", baseline="proxy-memory-get"),
    Case("proxy-jsonfile-set", "proxy-jsonfile", "Set", baseline="proxy-memory-set"),
    Case("proxy-sqlite-get", "proxy-sqlite", "Get", baseline="proxy-memory-get"),
    Case("proxy-sqlite-set", "proxy-sqlite", "Set", baseline="proxy-memory-set"),
    # The migration plan's criterion: shadow mode costs at most 10 % against route old.
    Case("shadow-get", "proxy-memory-shadow", "Get", baseline="proxy-memory-get", target_ratio=0.90),
    Case("shadow-set", "proxy-memory-shadow", "Set", baseline="proxy-memory-set", target_ratio=0.90),
    Case("split-get", "proxy-memory-split", "Get", baseline="proxy-memory-get"),
    Case("split-set", "proxy-memory-split", "Set", baseline="proxy-memory-set"),
    Case("trace-off-get", "proxy-memory-trace-off", "Get", baseline="proxy-memory-get"),
    Case("trace-ratio-get", "proxy-memory-trace-ratio", "Get", baseline="trace-off-get", target_ratio=0.85),
    Case("trace-on-get", "proxy-memory-trace-on", "Get", baseline="trace-off-get"),
    Case("trace-off-set", "proxy-memory-trace-off", "Set", baseline="proxy-memory-set"),
    Case("trace-ratio-set", "proxy-memory-trace-ratio", "Set", baseline="trace-off-set", target_ratio=0.85),
    Case("trace-on-set", "proxy-memory-trace-on", "Set", baseline="trace-off-set"),
    # --workers N: the scaling figure (no target: this machine has two cores, and h2load needs one).
    Case("workers-1-get", "proxy-sqlite-1-worker", "Get", connections=WORKERS_CONNECTIONS),
    Case("workers-2-get", "proxy-sqlite-2-workers", "Get", baseline="workers-1-get", connections=WORKERS_CONNECTIONS),
    Case("workers-1-set", "proxy-sqlite-1-worker", "Set", connections=WORKERS_CONNECTIONS),
    Case("workers-2-set", "proxy-sqlite-2-workers", "Set", baseline="workers-1-set", connections=WORKERS_CONNECTIONS),
)


def server_named(name: str) -> Server:
    for server in SERVERS:
        if server.name == name:
            return server
    raise KeyError(f"no server named {name!r}")


def case_named(name: str) -> Case:
    for case in CASES:
        if case.name == name:
            return case
    raise KeyError(f"no case named {name!r}; known: {', '.join(c.name for c in CASES)}")


def with_baselines(names: list[str]) -> list[Case]:
    """The cases named plus every baseline they read against, in CASES order (baselines first)."""
    wanted: set[str] = set()
    pending = list(names)
    while pending:
        case = case_named(pending.pop())
        if case.name not in wanted:
            wanted.add(case.name)
            if case.baseline is not None:
                pending.append(case.baseline)
    return [case for case in CASES if case.name in wanted]
