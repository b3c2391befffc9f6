"""The one Protocol every storage backend implements, and the value types that cross it.

Values cross as the UTF-8 bytes of one JSON document that proxy/validation.py has already checked,
so a backend never parses what it stores unless its format needs to (the legacy JSON file does).
Every method may raise BackendUnavailable; nothing else is expected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

Key = str
Value = bytes
Item = tuple[Key, Value]

#: How many keys or items a page of keys() / scan() holds unless the caller says otherwise.
DEFAULT_PAGE_SIZE = 1000


@runtime_checkable
class Backend(Protocol):
    """A key-value store holding JSON documents; one instance is shared by every request."""

    #: The config's type name (`memory`, `jsonfile`, `jsondir`, `sqlite`, ...), shown on spans.
    type_name: str
    #: True when keys() and scan() yield keys in ascending order (migration can then resume and
    #: verify by merging two streams instead of holding one side in memory).
    ordered_scan: bool

    async def get(self, key: Key) -> Value | None:
        """The stored document, or None when the key is absent (a stored `null` is b"null")."""
        ...

    async def set(self, key: Key, value: Value) -> None:
        """Store the document; returns only once it is durable."""
        ...

    async def has(self, key: Key) -> bool: ...

    async def delete(self, key: Key) -> bool:
        """Remove the key; True when it existed. Returns only once the removal is durable."""
        ...

    def keys(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Key]]:
        """Every key starting with prefix, each exactly once, in pages of at most page_size."""
        ...

    def scan(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Item]]:
        """Every (key, value) whose key starts with prefix, in pages: the bulk read of migration."""
        ...

    async def set_many(self, items: Sequence[Item]) -> None:
        """Store every item; durable when it returns (one commit where the backend allows)."""
        ...

    async def close(self) -> None:
        """Flush pending writes, release locks and files. Idempotent."""
        ...


@runtime_checkable
class ServerStore(Backend, Protocol):
    """A store on a server the proxy reaches over the network (PostgreSQL, Redis, an upstream KeyValue).

    Opening one never waits for its server: a server down at start-up leaves the proxy serving with
    this store unhealthy, its calls raising BackendUnavailable, until the server returns. The health
    prober calls probe() so that health turns back without waiting for traffic to try.
    """

    async def probe(self) -> None:
        """Return once the server answered one cheap request; BackendUnavailable when it did not in time."""
        ...


async def get_many(backend: Backend, keys: Sequence[Key]) -> list[Value | None]:
    """Many gets at once: one query where the backend offers `get_many`, else one get per key."""
    bulk = getattr(backend, "get_many", None)
    if bulk is not None:
        values: list[Value | None] = await bulk(keys)
        return values
    return [await backend.get(key) for key in keys]


async def load_many(backend: Backend, items: Sequence[Item]) -> None:
    """set_many of items the caller believes the store lacks (a migrate into an empty target): the same
    result, faster where the backend offers `load_many` (PostgreSQL's COPY straight into its table),
    which falls back to its own set_many when one of the keys is there after all."""
    bulk = getattr(backend, "load_many", None)
    if bulk is not None:
        await bulk(items)
    else:
        await backend.set_many(items)
