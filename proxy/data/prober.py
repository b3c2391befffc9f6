"""Health probes of the server stores: a store on a server says by itself when it is back.

A backend's health is otherwise what its last call did (data/backendcall.py). A server store that
failed, or that was down when the proxy started, may see no call for a long time (no traffic routed
to it, writes parked in the replication queue waiting): probing it keeps `turnout status`, /healthz
and the metrics true, and turns health back as soon as the server answers. Embedded stores are not
probed: a file that fails shows in the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from proxy.backends.base import Backend, ServerStore
from proxy.data.backendcall import BackendHealth
from proxy.errors import BackendUnavailable
from proxy.routing.router import Route

log = logging.getLogger("turnout.health")

#: Seconds between probes of a healthy server store, and of one that failed (sooner: to turn back quickly).
HEALTHY_INTERVAL_S = 5.0
FAILING_INTERVAL_S = 1.0


class HealthProber:
    """Probes each server store among the backends, updating the health the data plane keeps."""

    def __init__(self, backends: Mapping[Route, Backend], health: Mapping[Route, BackendHealth]) -> None:
        self._servers = {route: b for route, b in backends.items() if isinstance(b, ServerStore)}
        self._health = health
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._probe_forever(route), name=f"probe {route.value}")
                       for route in self._servers]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def probe_once(self, route: Route) -> bool:
        """Probe one server store now; True when it answered. Health records the outcome either way."""
        health = self._health[route]
        was_healthy = health.healthy
        try:
            await self._servers[route].probe()
        except BackendUnavailable as exc:
            health.errors += 1
            health.consecutive_errors += 1
            health.last_error = str(exc)
            if was_healthy:
                log.warning("%s store is unreachable: %s", route.value, exc)
            return False
        health.consecutive_errors = 0
        if not was_healthy:
            log.info("%s store answers again", route.value)
        return True

    async def _probe_forever(self, route: Route) -> None:
        while True:
            healthy = await self.probe_once(route)
            await asyncio.sleep(HEALTHY_INTERVAL_S if healthy else FAILING_INTERVAL_S)
