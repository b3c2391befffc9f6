"""One table of the store types a backend spec may name, and what each type is.

For every type: how it opens from a BackendSpec, whether it lives at a `path` (a file store) and
which file locks it there, whether several processes may serve it at once (`turnout serve
--workers N`), how a supervisor prepares it before its workers start, and, for the legacy layouts,
how its documents lie on disk. Config validation, the supervisor, the workers' check and the
migration tools all ask here, so a new store type is one entry below plus its module.

A driver is imported only when a store of its type is opened or prepared, so a proxy never loads
the drivers of stores it does not use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from proxy.backends.options import Option, OptionKind, OptionsCheck
from proxy.durable import sibling_lock

if TYPE_CHECKING:
    # Only for annotations: proxy.config asks this table which types exist, so it cannot be imported here.
    from proxy.backends.base import Backend
    from proxy.config import BackendSpec


class Opener(Protocol):
    """Opens a store of one type from its spec, ready to serve."""

    async def __call__(self, spec: BackendSpec) -> Backend: ...


class Preparer(Protocol):
    """Makes a store ready for several processes to open at once, before any of them does."""

    async def __call__(self, spec: BackendSpec) -> None: ...


class LegacyLayout(Enum):
    """How a legacy application lays its documents on disk, for tools that read the files as written."""

    OBJECT_FILE = "one JSON object in one file, a member per key"
    FILE_PER_KEY = "one JSON file per key in a folder"


@dataclass(frozen=True, slots=True)
class StoreType:
    """What one store type is; `name` is the `type` a config's backend names."""

    name: str
    opener: Opener
    #: The lock file of a store at a path; None for a type that takes no path (not a file store).
    lock_of: Callable[[Path], Path] | None = None
    #: True when every write is one atomic step of the store and nothing is cached in a process, so
    #: the workers of one supervisor may serve it together.
    shared_by_processes: bool = False
    #: Run by a supervisor before its workers start; None when a store needs nothing first.
    preparer: Preparer | None = None
    #: Set for the legacy formats the old application writes directly.
    layout: LegacyLayout | None = None
    #: The fields a spec of this type takes beside `type` and `path` (server address, timeouts, ...).
    options: tuple[Option, ...] = ()
    #: Checks the options together once each is valid alone (a table name, a URL's scheme, ...).
    check_options: OptionsCheck | None = None
    #: True for a store on a server the proxy reaches over the network (it may be down at start-up).
    server: bool = False

    @property
    def at_path(self) -> bool:
        """True for a file store: its spec takes `path`, and nothing else does."""
        return self.lock_of is not None

    def lock_file(self, spec: BackendSpec) -> Path | None:
        """The file whose lock says which turnout process serves this store; None when it has none."""
        if self.lock_of is None:
            return None
        return self.lock_of(store_path(spec))


def store_path(spec: BackendSpec) -> Path:
    """The path of a file store's spec (config validation has made sure it has one)."""
    if spec.path is None:
        raise ValueError(f"a {spec.type} store needs a path")
    return spec.path


async def _open_memory(spec: BackendSpec) -> Backend:
    from proxy.backends.memory import MemoryBackend

    return MemoryBackend()


async def _open_jsonfile(spec: BackendSpec) -> Backend:
    from proxy.backends.jsonfile import JsonFileBackend

    return await JsonFileBackend.open(store_path(spec), flush_interval=spec.options.get("flush_interval"))


async def _open_sqlite(spec: BackendSpec) -> Backend:
    from proxy.backends.sqlite import SqliteBackend

    return await SqliteBackend.open(store_path(spec))


async def _prepare_sqlite(spec: BackendSpec) -> None:
    # Switching a file to WAL needs it alone: done once here, not raced by N workers opening it.
    from proxy.backends.sqlitefile import prepare_file

    await asyncio.to_thread(prepare_file, store_path(spec))


async def _open_jsondir(spec: BackendSpec) -> Backend:
    from proxy.backends.jsondir import JsonDirBackend

    return await JsonDirBackend.open(store_path(spec))


def _jsondir_lock(folder: Path) -> Path:
    from proxy.backends.jsondir import lock_path

    return lock_path(folder)


async def _open_postgres(spec: BackendSpec) -> Backend:
    from proxy.backends.postgres import PostgresBackend

    return await PostgresBackend.open(spec)


async def _open_redis(spec: BackendSpec) -> Backend:
    from proxy.backends.redis import RedisBackend

    return await RedisBackend.open(spec)


async def _open_upstream(spec: BackendSpec) -> Backend:
    from proxy.backends.upstream import UpstreamBackend

    return await UpstreamBackend.open(spec)


def _check_postgres(options: Mapping[str, object]) -> None:
    from proxy.backends.serveroptions import check_postgres

    check_postgres(options)


def _check_redis(options: Mapping[str, object]) -> None:
    from proxy.backends.serveroptions import check_redis

    check_redis(options)


def _check_upstream(options: Mapping[str, object]) -> None:
    from proxy.backends.serveroptions import check_upstream

    check_upstream(options)


#: The timeouts every server store takes: reaching the server, and one call once connected.
_SERVER_TIMEOUTS = (
    Option("connect_timeout", OptionKind.SECONDS, default=5.0),
    Option("call_timeout", OptionKind.SECONDS, default=5.0),
)

#: Every store type, by name. The shareable ones are listed in this order in messages.
STORE_TYPES: Mapping[str, StoreType] = MappingProxyType({entry.name: entry for entry in (
    StoreType("memory", _open_memory),
    StoreType("jsonfile", _open_jsonfile, lock_of=sibling_lock, layout=LegacyLayout.OBJECT_FILE,
              options=(Option("flush_interval", OptionKind.SECONDS),)),
    StoreType("sqlite", _open_sqlite, lock_of=sibling_lock, shared_by_processes=True, preparer=_prepare_sqlite),
    StoreType("jsondir", _open_jsondir, lock_of=_jsondir_lock, shared_by_processes=True,
              layout=LegacyLayout.FILE_PER_KEY),
    StoreType("postgres", _open_postgres, shared_by_processes=True, server=True, check_options=_check_postgres,
              options=(Option("dsn", OptionKind.TEXT, required=True, secret=True),
                       Option("table", OptionKind.TEXT, default="kv"),
                       Option("pool_size", OptionKind.COUNT, default=8), *_SERVER_TIMEOUTS)),
    StoreType("redis", _open_redis, shared_by_processes=True, server=True, check_options=_check_redis,
              options=(Option("url", OptionKind.TEXT, required=True, secret=True),
                       Option("key_prefix", OptionKind.TEXT, default=""),
                       Option("cluster", OptionKind.FLAG, default=False),
                       # More cluster nodes to start from, so a proxy starts while the url's node is down.
                       Option("nodes", OptionKind.TEXT, default=""),
                       Option("pool_size", OptionKind.COUNT, default=16), *_SERVER_TIMEOUTS)),
    StoreType("grpc", _open_upstream, shared_by_processes=True, server=True, check_options=_check_upstream,
              options=(Option("target", OptionKind.TEXT, required=True),
                       Option("ca_file", OptionKind.PATH),
                       # A client certificate, for an upstream whose data port asks mTLS (contract §5).
                       Option("cert_file", OptionKind.PATH),
                       Option("key_file", OptionKind.PATH),
                       Option("retries", OptionKind.COUNT, default=3), *_SERVER_TIMEOUTS)),
)})


def store_type(name: str) -> StoreType:
    """The entry of a type name; ValueError for a name the table does not hold."""
    entry = STORE_TYPES.get(name)
    if entry is None:
        raise ValueError(f"unknown backend type {name!r}")
    return entry
