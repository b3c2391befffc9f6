"""Opens each backend type on fresh files, for the conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from proxy.backends import open_backend
from proxy.backends.base import Backend
from proxy.config import BackendSpec

#: Every backend type that must pass the conformance suite.
ALL_TYPES = ("memory", "jsonfile", "jsondir", "sqlite")
#: The types that keep data across close and reopen (and so across a crash).
DURABLE_TYPES = ("jsonfile", "jsondir", "sqlite")
_STORE_NAMES = {"jsonfile": "store.json", "jsondir": "store.d", "sqlite": "store.sqlite"}


def spec_for(kind: str, folder: Path) -> BackendSpec:
    return BackendSpec(type=kind, path=folder / _STORE_NAMES[kind] if kind in _STORE_NAMES else None)


Opener = Callable[[], Awaitable[Backend]]


@pytest.fixture(params=ALL_TYPES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def opener(kind: str, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens the backend under test on the same files each time; closes every one it opened."""
    opened: list[Backend] = []

    async def open_again() -> Backend:
        backend = await open_backend(spec_for(kind, tmp_path))
        opened.append(backend)
        return backend

    yield open_again
    for backend in opened:
        await backend.close()


@pytest.fixture
async def backend(opener: Opener) -> Backend:
    return await opener()
