"""Executes each operation against the backends: the only place that knows two backends exist.

This first cut sends every operation to `old`, which is what the shipped flags ask for; routing by
the flag file, shadow calls and the replication queue build on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from proxy.backends.base import Backend, Key, Value


class Dispatcher:
    def __init__(self, old: Backend, new: Backend) -> None:
        self.old = old
        self.new = new

    async def get(self, key: Key, caller: str | None) -> Value | None:
        return await self.old.get(key)

    async def set(self, key: Key, value: Value, caller: str | None) -> None:
        await self.old.set(key, value)

    async def has(self, key: Key, caller: str | None) -> bool:
        return await self.old.has(key)

    async def delete(self, key: Key, caller: str | None) -> bool:
        return await self.old.delete(key)

    def keys(self, prefix: str, caller: str | None) -> AsyncIterator[list[Key]]:
        return self.old.keys(prefix)

    async def close(self) -> None:
        """Flush what the dispatcher still owes the backends; the backends are closed by their owner."""
