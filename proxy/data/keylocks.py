"""One writer per key at a time inside a proxy, so writes to a key land in one order on both backends.

A key is in the table only while someone holds it, with the queue of its waiters once a second
writer comes, so a proxy that has seen millions of keys keeps nothing for any of them. Taking a free
key is one dict insert: no lock object per key, no future, no turn of the event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial


class KeyLocks:
    def __init__(self) -> None:
        # key -> None while held with nobody waiting, else the waiters in arrival order.
        self._held: dict[str, deque[asyncio.Future[None]] | None] = {}

    def take_free(self, key: str) -> bool:
        """Take the key's lock at once if nobody holds it (then give it back with release), else False:
        then wait for it with acquire. The usual write finds its key free, and this costs it neither a
        coroutine nor a release function of its own."""
        held = self._held
        if key in held:
            return False
        held[key] = None
        return True

    def release(self, key: str) -> None:
        """Give back a lock taken with take_free."""
        self._release(key)

    async def acquire(self, key: str) -> Callable[[], None]:
        """Wait for the key's lock; returns the function that releases it (call it exactly once)."""
        held = self._held
        if key not in held:
            held[key] = None
            return partial(self._release, key)
        waiters = held[key]
        if waiters is None:
            waiters = held[key] = deque()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._release(key)  # handed over just as we gave up: pass it on
            else:
                # Left in the queue, where _release skips it: a release may already have dropped it
                # (between the cancellation and this line), so it cannot be removed by value here.
                turn.cancel()
            raise
        return partial(self._release, key)

    async def acquire_many(self, keys: Iterable[str]) -> Callable[[], None]:
        """Wait for every key's lock, taken one by one in sorted order; returns the function that
        releases them all (call it exactly once). Sorted, because every holder of several keys then
        takes them in one order and a holder of one key waits for nothing else: no wait can go round."""
        return await self._take_turns(keys)

    async def _take_turns(self, keys: Iterable[str]) -> Callable[[], None]:
        """acquire_many of this table alone (a subclass's own acquire, which may do more, is not called)."""
        releases: list[Callable[[], None]] = []
        try:
            for key in sorted(set(keys)):
                releases.append(await KeyLocks.acquire(self, key))
        except BaseException:
            for release in reversed(releases):
                release()
            raise
        return partial(_release_all, releases)

    def _release(self, key: str) -> None:
        """Hand the key to its first live waiter, or free it."""
        waiters = self._held[key]
        while waiters:
            turn = waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the waiter owns the key from here
                return
        del self._held[key]

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        release = await self.acquire(key)
        try:
            yield
        finally:
            release()

    def __len__(self) -> int:
        return len(self._held)


def _release_all(releases: list[Callable[[], None]]) -> None:
    for release in reversed(releases):
        release()
