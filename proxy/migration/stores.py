"""The two stores a migration works on, and what coordinates it with live traffic when there is some."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from proxy.backends import open_backend
from proxy.backends.base import Backend
from proxy.collector import settle_garbage_collector
from proxy.config import Config
from proxy.data.keylocks import KeyLocks
from proxy.data.live import Live
from proxy.errors import BackendUnavailable
from proxy.replication.local import ReplicationQueue
from proxy.routing.router import Op, Route, Router
from proxy.routing.watcher import FlagWatcher
from proxy.statedir import QUEUE_FILE, queue_store


@dataclass
class Stores:
    old: Backend
    new: Backend
    router: Router  # which backend is each key's source of truth (its write primary)
    live: Live | None = None

    def backend(self, route: Route) -> Backend:
        return self.old if route is Route.OLD else self.new

    def truth(self, key: str) -> Route:
        router = self.live.routes.router if self.live is not None else self.router
        return router.route(Op.SET, key).primary


@contextlib.asynccontextmanager
async def open_offline(config: Config) -> AsyncIterator[Stores]:
    """Open both stores (taking their locks, so no proxy writes meanwhile) and replay what a stopped
    proxy left in the replication queue first, so the stores start from a consistent state."""
    old = await open_backend(config.old)
    try:
        new = await open_backend(config.new)
        try:
            watcher = FlagWatcher(config.flags, config.state_dir)
            watcher.load_initial()
            await drain_leftovers(config.state_dir, old, new)
            settle_garbage_collector()  # a bulk copy allocates per key; what is open now stays
            yield Stores(old, new, watcher.router)
        finally:
            await new.close()
    finally:
        await old.close()


async def drain_leftovers(state_dir: Path, old: Backend, new: Backend) -> None:
    if not (state_dir / QUEUE_FILE).exists():
        return
    store = await open_backend(queue_store(state_dir))
    try:
        queue = ReplicationQueue(store, {Route.OLD.value: old, Route.NEW.value: new}, KeyLocks())
        if await queue.load():
            queue.start()
            drained = await queue.drain(60)
            await queue.stop()
            if not drained:
                raise BackendUnavailable(f"{queue.stats().depth} replication intents could not be replayed: "
                                   f"{queue.stats().last_error}")
    finally:
        await store.close()
