"""The data plane as the operators' side sees it: one narrow interface, so the admin API never reaches
into the dispatcher's attributes.

It pauses and resumes writes (the write gate), drains the replication queue, hands a migration what
coordinates it with live traffic, and takes a snapshot of the figures that status pages and /metrics
show. Overrides are the routing plane's (the flag watcher's `set_override`), not this one's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from proxy.backends.base import Backend
from proxy.data.discrepancies import Report
from proxy.data.dispatcher import Dispatcher
from proxy.data.live import Live
from proxy.data.shadow import ShadowCounters
from proxy.data.writegate import PauseStatus, WriteGate
from proxy.replication.queue import QueueStats
from proxy.routing.router import Route
from proxy.routing.watcher import FlagWatcher
from proxy.telemetry.metrics import Metrics


@dataclass(frozen=True, slots=True)
class BackendStatus:
    name: str
    type: str
    healthy: bool
    error: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The data plane's figures at one moment (the metrics and report are live: read, never written)."""

    replication: QueueStats
    writes: PauseStatus
    discrepancies: Report
    dropped_discrepancies: int
    shadow: ShadowCounters
    backends: tuple[BackendStatus, ...]
    metrics: Metrics


class DataPlane:
    def __init__(self, dispatcher: Dispatcher, watcher: FlagWatcher) -> None:
        self._dispatcher = dispatcher
        self._watcher = watcher

    @property
    def gate(self) -> WriteGate:
        return self._dispatcher.gate

    def pause_writes(self, reason: str, lease_s: float = 0.0) -> PauseStatus:
        return self.gate.pause(reason, lease_s)

    def renew_pause(self, lease_s: float) -> PauseStatus:
        return self.gate.renew(lease_s)

    def resume_writes(self, reason: str) -> PauseStatus:
        return self.gate.resume(reason)

    async def drain(self, timeout: float) -> QueueStats:
        """Wait (at most timeout seconds) until every pending copy landed; the queue's figures then."""
        queue = self._dispatcher.queue
        await queue.drain(timeout)
        return queue.stats()

    def backends(self) -> Mapping[Route, Backend]:
        return self._dispatcher.backends

    def live(self) -> Live:
        return Live(self._dispatcher.locks, self._dispatcher.queue, self._watcher)

    def snapshot(self) -> Snapshot:
        dispatcher = self._dispatcher
        return Snapshot(
            replication=dispatcher.queue.stats(),
            writes=self.gate.status(),
            discrepancies=dispatcher.discrepancies.report,
            dropped_discrepancies=dispatcher.discrepancies.dropped,
            shadow=replace(dispatcher.shadow),
            backends=tuple(BackendStatus(route.value, backend.type_name, dispatcher.health[route].healthy,
                                         dispatcher.health[route].last_error)
                           for route, backend in dispatcher.backends.items()),
            metrics=dispatcher.metrics,
        )
