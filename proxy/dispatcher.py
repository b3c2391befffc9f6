"""Executes a Decision: the primary call, the shadow call, the replication intent, per-key order.

It is the only place that knows two backends exist. For a write it takes the key's lock, records
the replication intent durably, then writes the primary; in shadow mode it writes the other backend
beside it and settles the intent once that succeeded, otherwise the replayer copies the key later.
Shadow work never slows or fails the caller: it finishes in the background (still holding the key's
lock, so the next write of that key waits for it), and what exceeds the shadow budget is left to the
replication queue and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from proxy.backends.base import Backend, Key, Value
from proxy.errors import BackendUnavailable, ReadOnly
from proxy.keylocks import KeyLocks
from proxy.replication import ReplicationQueue
from proxy.router import Decision, Op, Route, Router

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Shadow calls in flight at once; beyond it a write's copy is left to the replication queue.
MAX_SHADOW_IN_FLIGHT = 512
#: How long shutdown waits for shadow writes still running.
SHADOW_DRAIN_S = 5.0


class RouterSource(Protocol):
    """Whatever holds the router in force (the flag watcher); read once per operation."""

    @property
    def router(self) -> Router: ...


@dataclass
class BackendHealth:
    """What the proxy has seen of one backend's calls, for `turnout status` and health checks."""

    calls: int = 0
    errors: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    consecutive_errors: int = 0

    @property
    def healthy(self) -> bool:
        return self.consecutive_errors == 0


@dataclass
class ShadowCounters:
    writes: int = 0
    write_failures: int = 0
    overflow: int = 0
    in_flight: int = 0
    failures_by_backend: dict[str, int] = field(default_factory=dict)


class Dispatcher:
    def __init__(
        self,
        backends: Mapping[Route, Backend],
        routes: RouterSource,
        queue: ReplicationQueue,
        locks: KeyLocks,
    ) -> None:
        self.backends = backends
        self.routes = routes
        self.queue = queue
        self.locks = locks
        self.health = {route: BackendHealth() for route in backends}
        self.shadow = ShadowCounters()
        self._background: set[asyncio.Task[None]] = set()

    async def _call(self, route: Route, call: Awaitable[T]) -> T:
        """Await a backend call, keeping that backend's health record."""
        health = self.health[route]
        health.calls += 1
        try:
            result = await call
        except BackendUnavailable as exc:
            self._failed(route, exc)
            raise
        health.consecutive_errors = 0
        return result

    def _failed(self, route: Route, exc: Exception) -> None:
        health = self.health[route]
        health.errors += 1
        health.consecutive_errors += 1
        health.last_error = str(exc)
        health.last_error_at = asyncio.get_running_loop().time()

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, key: Key, caller: str | None) -> Value | None:
        decision = self.routes.router.route(Op.GET, key, caller)
        return await self._call(decision.primary, self.backends[decision.primary].get(key))

    async def has(self, key: Key, caller: str | None) -> bool:
        decision = self.routes.router.route(Op.HAS, key, caller)
        return await self._call(decision.primary, self.backends[decision.primary].has(key))

    async def keys(self, prefix: str, caller: str | None) -> AsyncIterator[list[Key]]:
        decision = self.routes.router.route(Op.KEYS, prefix, caller)
        pages = self.backends[decision.primary].keys(prefix)
        while True:
            try:
                page = await self._call(decision.primary, anext(pages))
            except StopAsyncIteration:
                return
            yield page

    # -- writes --------------------------------------------------------------------------------

    async def set(self, key: Key, value: Value, caller: str | None) -> None:
        await self._write(Op.SET, key, lambda backend: backend.set(key, value), caller)

    async def delete(self, key: Key, caller: str | None) -> bool:
        existed: bool = await self._write(Op.DELETE, key, lambda backend: backend.delete(key), caller)
        return existed

    async def _write(self, op: Op, key: Key, apply: Callable[[Backend], Awaitable[T]], caller: str | None) -> T:
        router = self.routes.router
        if router.flags.read_only:
            revision = router.flags.revision
            raise ReadOnly(f"writes are paused: the flag file says read_only: true (revision {revision!r})")
        decision = router.route(op, key, caller)
        release = await self.locks.acquire(key)
        handed_off = False
        try:
            await self.queue.record(key, decision.primary.value, decision.secondary.value)
            shadow = self._start_shadow(decision, apply)
            try:
                result = await self._call(decision.primary, apply(self.backends[decision.primary]))
            except BaseException:
                if shadow is not None:
                    # The primary may not hold what the shadow wrote: the replayer copies its state.
                    self._finish_in_background(key, decision, shadow, release, settle=False)
                    handed_off = True
                raise
            if shadow is not None:
                # The shadow write finishes in the background, holding the key's lock.
                self._finish_in_background(key, decision, shadow, release, settle=True)
                handed_off = True
            return result
        finally:
            if not handed_off:
                release()

    def _start_shadow(self, decision: Decision, apply: Callable[[Backend], Awaitable[T]]) -> asyncio.Task[T] | None:
        if not decision.compare:
            return None
        if self.shadow.in_flight >= MAX_SHADOW_IN_FLIGHT:
            self.shadow.overflow += 1  # the replication queue copies this key instead
            return None
        self.shadow.in_flight += 1
        self.shadow.writes += 1

        async def run() -> T:
            return await self._call(decision.secondary, apply(self.backends[decision.secondary]))

        return asyncio.create_task(run())

    def _finish_in_background(
        self, key: Key, decision: Decision, shadow: asyncio.Task[T], release: Callable[[], None], settle: bool
    ) -> None:
        async def finish() -> None:
            try:
                await shadow
                if settle:  # both backends now hold what this write wrote
                    await self.queue.settle(key)
            except Exception as exc:
                self.shadow.write_failures += 1
                name = decision.secondary.value
                self.shadow.failures_by_backend[name] = self.shadow.failures_by_backend.get(name, 0) + 1
                log.debug("shadow write of %r to %s failed; the replication queue will copy it: %s", key, name, exc)
            finally:
                self.shadow.in_flight -= 1
                release()

        task = asyncio.create_task(finish())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Let shadow writes still running finish; the replication queue keeps whatever they miss."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=SHADOW_DRAIN_S)
