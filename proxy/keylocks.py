"""One writer per key at a time inside a proxy, so writes to a key land in one order on both backends.

A lock exists only while someone holds or waits for it, so a proxy that has seen millions of keys
keeps no lock for any of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class KeyLocks:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    async def acquire(self, key: str) -> Callable[[], None]:
        """Wait for the key's lock; returns the function that releases it (exactly once)."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            self._forget(key, entry)
            raise

        def release() -> None:
            entry.lock.release()
            self._forget(key, entry)

        return release

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        release = await self.acquire(key)
        try:
            yield
        finally:
            release()

    def _forget(self, key: str, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
