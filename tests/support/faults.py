"""A fault injector for unit tests: a real backend that can be switched to failing, as a dead server would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from proxy.backends.base import DEFAULT_PAGE_SIZE, Backend, Item, Key, Value
from proxy.errors import BackendUnavailable


class SwitchableBackend:
    """Delegates to `inner`, except that every call fails with BackendUnavailable while `down`."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.type_name = inner.type_name
        self.ordered_scan = inner.ordered_scan
        self.down = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise BackendUnavailable(f"{self.type_name} backend is down (injected)")

    async def get(self, key: Key) -> Value | None:
        self._check()
        return await self.inner.get(key)

    async def set(self, key: Key, value: Value) -> None:
        self._check()
        await self.inner.set(key, value)

    async def has(self, key: Key) -> bool:
        self._check()
        return await self.inner.has(key)

    async def delete(self, key: Key) -> bool:
        self._check()
        return await self.inner.delete(key)

    async def keys(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Key]]:
        self._check()
        async for page in self.inner.keys(prefix, page_size):
            yield page

    async def scan(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Item]]:
        self._check()
        async for page in self.inner.scan(prefix, page_size):
            yield page

    async def set_many(self, items: Sequence[Item]) -> None:
        self._check()
        await self.inner.set_many(items)

    async def close(self) -> None:
        await self.inner.close()
