"""Backends: one module per store type behind the Protocol in base.py, opened from a BackendSpec.

What each type is (file store or not, shareable or not, its lock, its preparation) is the table in
registry.py; the functions here answer for one spec from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from proxy.backends.base import Backend
from proxy.backends.registry import STORE_TYPES, store_type

if TYPE_CHECKING:
    # Only for annotations: proxy.config imports the registry, which runs this module first.
    from proxy.config import BackendSpec

#: Store types that several processes of one proxy may serve at once (`turnout serve --workers N`).
SHARED_BY_PROCESSES: tuple[str, ...] = tuple(name for name, entry in STORE_TYPES.items() if entry.shared_by_processes)


def shared_lock_path(spec: BackendSpec) -> Path | None:
    """The lock file of a store several processes may serve (None for a server store: it has no file
    to lock, and many proxies may share it); ValueError for a type one process alone can serve."""
    entry = store_type(spec.type)
    if not entry.shared_by_processes:
        raise ValueError(f"a {spec.type} store is served by one process alone")
    return entry.lock_file(spec)


async def prepare_store(spec: BackendSpec) -> None:
    """Make a store ready for several processes to open at once (a no-op for types that need nothing)."""
    preparer = store_type(spec.type).preparer
    if preparer is not None:
        await preparer(spec)


async def open_backend(spec: BackendSpec) -> Backend:
    """Open the store a spec names; the import is lazy so unused drivers are never loaded."""
    return await store_type(spec.type).opener(spec)
