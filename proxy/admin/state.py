"""What the operators' side of one proxy process reads and steers: the flag watcher, the data plane
(once the backends are open), the last rollback, and, under `turnout serve --workers N`, the way
worker 0 reaches the other workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from turnout.admin.v1 import admin_pb2

from proxy.data.plane import DataPlane
from proxy.routing.watcher import FlagWatcher
from proxy.telemetry.tracing import Telemetry
from proxy.workers.relay import Peer, current


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

    def other_workers(self) -> tuple[Peer, ...]:
        """The workers this one speaks for: none unless it is worker 0 (the others never relay)."""
        return current(self.peers) if self.worker == 0 else ()

    def other_pages(self) -> tuple[Peer, ...]:
        """The HTTP sides of the workers whose /metrics this one serves with its own (worker 0 only)."""
        return current(self.http_peers) if self.worker == 0 else ()

    def healthy(self) -> bool:
        """Whether the proxy serves: its backends are open and it is neither starting nor stopping."""
        return self.plane is not None and self.serving
