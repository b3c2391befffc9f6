"""What the operators' side of one proxy process reads and steers: the flag watcher, the data plane
(once the backends are open), the last rollback, and, under `turnout serve --workers N`, the way
worker 0 reaches the other workers.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from turnout.admin.v1 import admin_pb2

from proxy.data.plane import DataPlane
from proxy.routing.watcher import FlagWatcher
from proxy.safety.guard import Guard
from proxy.safety.hooks import Hooks
from proxy.telemetry.tracing import Telemetry
from proxy.workers.relay import Peer, current

log = logging.getLogger(__name__)


def _nobody() -> Sequence[tuple[int, str]]:
    return ()


@dataclass
class AdminState:
    """What the admin API reads and steers; the data plane is None until the backends are open."""

    watcher: FlagWatcher
    plane: DataPlane | None
    started: float
    state_dir: Path
    telemetry: Telemetry
    last_rollback: admin_pb2.RollbackRecord | None = None
    #: True from the moment callers hear that the proxy serves until shutdown begins (/healthz).
    serving: bool = False
    #: This process's index under `turnout serve --workers N` (0 for a single process).
    worker: int = 0
    #: Worker 0's way to the others: (index, "host:port" of its admin API) of every other worker, read
    #: afresh on each call (a restarted worker listens on a new port). Empty everywhere else.
    peers: Callable[[], Sequence[tuple[int, str]]] = _nobody
    #: The same for the other workers' HTTP sides, whose /metrics worker 0 serves as its own.
    http_peers: Callable[[], Sequence[tuple[int, str]]] = _nobody
    #: The bearer token of admin.token_file that every admin call and page must carry; None: none asked.
    admin_token: str | None = None
    #: The config's hooks (proxy.safety.hooks): run on rollback, resume and canary steps.
    hooks: Hooks = field(default_factory=lambda: Hooks(()))
    #: The guard judging the health window (a lone process, or worker 0); None elsewhere.
    guard: Guard | None = None
    #: Rollbacks recorded since the proxy started, by (automatic, trigger or "operator").
    rollbacks: Counter[tuple[bool, str]] = field(default_factory=Counter)

    def record_rollback(self, record: admin_pb2.RollbackRecord, trigger: str = "") -> None:
        """A rollback that happened (an operator's, a cutover's or the guard's, which names its
        trigger): the last rollback in status, the log, a `turnout.rollback` span and the metric."""
        self.last_rollback = record
        outcome = "ok" if record.ok else "failed"
        (log.warning if record.ok else log.error)(
            "%s rollback %s: %s%s%s", "automatic" if record.automatic else "operator", outcome, record.reason,
            f"; {record.detail}" if record.detail else "", f"; incident {record.incident}" if record.incident else "")
        self.telemetry.rollback(record.reason, record.ok, record.automatic, record.detail, record.incident)
        self.rollbacks[record.automatic, trigger or ("cutover" if record.automatic else "operator")] += 1

    def other_workers(self) -> tuple[Peer, ...]:
        """The workers this one speaks for: none unless it is worker 0 (the others never relay)."""
        return current(self.peers) if self.worker == 0 else ()

    def other_pages(self) -> tuple[Peer, ...]:
        """The HTTP sides of the workers whose /metrics this one serves with its own (worker 0 only)."""
        return current(self.http_peers) if self.worker == 0 else ()

    def healthy(self) -> bool:
        """Whether the proxy serves: its backends are open and it is neither starting nor stopping."""
        return self.plane is not None and self.serving
