"""Opens each backend type on fresh files (or a fresh table / key prefix of a real server), for the
conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from proxy.backends import open_backend
from proxy.backends.base import Backend
from proxy.config import BackendSpec

#: Every embedded backend type that must pass the conformance suite.
EMBEDDED_TYPES = ("memory", "jsonfile", "jsonfile-journal", "jsondir", "sqlite")
#: Kinds that are a store type with options: the legacy file with its journal on, rewritten every
#: 20 ms so that rewrites and journal rotations run during the tests.
_VARIANTS: dict[str, tuple[str, dict[str, object]]] = {"jsonfile-journal": ("jsonfile", {"flush_interval": 0.02})}
#: The server store kinds: each names the fixture (tests/support/servers) that gives a fresh spec on a
#: real server started for the test session. `redis-cluster` is the redis type with `cluster: true`.
SERVER_KINDS = {
    "postgres": "postgres_spec",
    "redis": "redis_spec",
    "redis-cluster": "redis_cluster_spec",
    "grpc": "upstream_spec",
}
#: Every kind of store the conformance suite runs over.
ALL_TYPES = EMBEDDED_TYPES + tuple(SERVER_KINDS)
#: The embedded types that keep data across close and reopen (and so across a crash).
DURABLE_TYPES = ("jsonfile", "jsondir", "sqlite")
_STORE_NAMES = {"jsonfile": "store.json", "jsondir": "store.d", "sqlite": "store.sqlite"}


def spec_for(kind: str, folder: Path) -> BackendSpec:
    """The spec of an embedded store kept in folder."""
    type_name, options = _VARIANTS.get(kind, (kind, {}))
    path = folder / _STORE_NAMES[type_name] if type_name in _STORE_NAMES else None
    return BackendSpec(type=type_name, path=path, options=dict(options))


Opener = Callable[[], Awaitable[Backend]]


@pytest.fixture(params=ALL_TYPES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_spec(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> BackendSpec:
    """The spec of the store under test: fresh files, or a fresh namespace on a real server."""
    if kind in SERVER_KINDS:
        spec: BackendSpec = request.getfixturevalue(SERVER_KINDS[kind])
        return spec
    return spec_for(kind, tmp_path)


@pytest.fixture
async def opener(store_spec: BackendSpec) -> AsyncIterator[Opener]:
    """Opens the backend under test on the same store each time; closes every one it opened."""
    opened: list[Backend] = []

    async def open_again() -> Backend:
        backend = await open_backend(store_spec)
        opened.append(backend)
        return backend

    yield open_again
    for backend in opened:
        await backend.close()


@pytest.fixture
async def backend(opener: Opener) -> Backend:
    return await opener()
