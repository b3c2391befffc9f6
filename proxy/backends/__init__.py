"""Backends: one module per store type behind the Protocol in base.py, opened from a BackendSpec."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from proxy.backends.base import Backend
from proxy.backends.jsondir import lock_path as jsondir_lock
from proxy.config import BackendSpec
from proxy.durable import sibling_lock

#: Store types that several processes of one proxy may serve at once (`turnout serve --workers N`),
#: each with where its lock file is: every write is one atomic step of the store itself, and
#: nothing is cached in a process.
SHARED_BY_PROCESSES: Mapping[str, Callable[[Path], Path]] = {"sqlite": sibling_lock, "jsondir": jsondir_lock}


def shared_lock_path(spec: BackendSpec) -> Path:
    """The lock file of a store several processes may serve; ValueError for a type that cannot be."""
    lock_of = SHARED_BY_PROCESSES.get(spec.type)
    if lock_of is None:
        raise ValueError(f"a {spec.type} store is served by one process alone")
    assert spec.path is not None
    return lock_of(spec.path)


async def open_backend(spec: BackendSpec) -> Backend:
    """Open the store a spec names; the import is lazy so unused drivers are never loaded."""
    if spec.type == "memory":
        from proxy.backends.memory import MemoryBackend

        return MemoryBackend()
    if spec.type == "jsonfile":
        from proxy.backends.jsonfile import JsonFileBackend

        assert spec.path is not None
        return await JsonFileBackend.open(spec.path)
    if spec.type == "jsondir":
        from proxy.backends.jsondir import JsonDirBackend

        assert spec.path is not None
        return await JsonDirBackend.open(spec.path)
    if spec.type == "sqlite":
        from proxy.backends.sqlite import SqliteBackend

        assert spec.path is not None
        return await SqliteBackend.open(spec.path)
    raise ValueError(f"unknown backend type {spec.type!r}")
