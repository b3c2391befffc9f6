"""Backends: one module per store type behind the Protocol in base.py, opened from a BackendSpec."""

from __future__ import annotations

from proxy.backends.base import Backend
from proxy.config import BackendSpec


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
