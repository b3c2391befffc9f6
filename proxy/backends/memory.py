"""An in-process dict: the fake that ships in the package, so tests and benchmarks run the real code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from proxy.backends.base import DEFAULT_PAGE_SIZE, Item, Key, Value


class MemoryBackend:
    type_name = "memory"
    ordered_scan = True

    def __init__(self) -> None:
        self._data: dict[Key, Value] = {}

    async def get(self, key: Key) -> Value | None:
        return self._data.get(key)

    async def set(self, key: Key, value: Value) -> None:
        self._data[key] = value

    async def get_many(self, keys: Sequence[Key]) -> list[Value | None]:
        return [self._data.get(key) for key in keys]

    async def has(self, key: Key) -> bool:
        return key in self._data

    async def delete(self, key: Key) -> bool:
        return self._data.pop(key, None) is not None

    async def keys(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Key]]:
        async for page in self.scan(prefix, page_size):
            yield [key for key, _ in page]

    async def scan(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Item]]:
        # A sorted snapshot of the matching keys: writers during the scan neither break it nor
        # make it yield a key twice.
        matching = sorted(k for k in self._data if k.startswith(prefix))
        for start in range(0, len(matching), page_size):
            page = [(k, v) for k in matching[start : start + page_size] if (v := self._data.get(k)) is not None]
            if page:
                yield page

    async def set_many(self, items: Sequence[Item]) -> None:
        self._data.update(items)

    async def close(self) -> None:
        pass
