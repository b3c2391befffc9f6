"""What a migration inside a running proxy needs of the data plane, and no more (so the migration
library, which the command line loads too, never loads the dispatcher)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from proxy.data.keylocks import KeyLocks
from proxy.replication.queue import IntentQueue
from proxy.routing.watcher import FlagWatcher


@dataclass(frozen=True, slots=True)
class Live:
    """What coordinates a migration with live traffic: a key's writes wait for its turn, the queue says
    which copies are in flight, and the routes say which store is each key's source of truth."""

    locks: KeyLocks
    queue: IntentQueue
    routes: FlagWatcher

    @asynccontextmanager
    async def page(self, keys: Sequence[str]) -> AsyncIterator[set[str]]:
        """Hold every key of a page (taken in one order, see KeyLocks.acquire_many) and yield those
        with a copy pending, asked once for the page under the locks. While held, no write of these
        keys is under way or half done: a write keeps its key until both stores answered, and one
        that failed on the way has left an intent, so its key is among the pending."""
        release = await self.locks.acquire_many(keys)
        try:
            yield await self.queue.pending_among(keys)
        finally:
            release()
