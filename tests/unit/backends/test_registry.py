"""The table of store types decides what config, `--workers`, locks, preparation and validate do."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.backends import SHARED_BY_PROCESSES, open_backend, prepare_store, shared_lock_path
from proxy.backends.base import Backend
from proxy.backends.options import read_options
from proxy.backends.registry import STORE_TYPES, store_type
from proxy.config import BackendSpec, Config, parse_config
from proxy.durable import StoreLock
from proxy.errors import ConfigError, StoreLocked
from proxy.migration.validate import reads_files
from proxy.statedir import queue_store
from proxy.workers.role import CannotSupervise, check_shareable
from proxy.workers.supervisor import hold_store_locks, prepare_stores
from tests.support.paths import ROOT
from tests.unit.backends.conftest import ALL_TYPES

TYPES = tuple(STORE_TYPES)
FILE_TYPES = tuple(name for name, entry in STORE_TYPES.items() if entry.at_path)
SHARED = tuple(name for name, entry in STORE_TYPES.items() if entry.shared_by_processes)
ALONE = tuple(name for name in TYPES if name not in SHARED)
SERVER_TYPES = tuple(name for name, entry in STORE_TYPES.items() if entry.server)
EMBEDDED = tuple(name for name in TYPES if name not in SERVER_TYPES)
#: The address options a server store requires, as a config would give them (nothing listens there).
ADDRESSES: dict[str, dict[str, Any]] = {
    "postgres": {"dsn": "postgresql://turnout@127.0.0.1:1/app"},
    "redis": {"url": "redis://127.0.0.1:1/0"},
    "grpc": {"target": "127.0.0.1:1"},
}


def backend_doc(kind: str, name: str) -> dict[str, Any]:
    return {"type": kind, "path": name} if STORE_TYPES[kind].at_path else {"type": kind, **ADDRESSES.get(kind, {})}


def config_of(tmp_path: Path, old: str, new: str) -> Config:
    doc = {"listen": "127.0.0.1:0", "flags": "flags.yaml", "state_dir": "state",
           "backends": {"old": backend_doc(old, "old.store"), "new": backend_doc(new, "new.store")}}
    return parse_config(doc, base=tmp_path)


def spec_at(kind: str, tmp_path: Path) -> BackendSpec:
    options = read_options(STORE_TYPES[kind].options, ADDRESSES.get(kind, {}), tmp_path)
    return BackendSpec(type=kind, path=tmp_path / "store" if STORE_TYPES[kind].at_path else None, options=options)


def journal_mode(path: Path) -> str:
    connection = sqlite3.connect(path)
    try:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        connection.close()


@pytest.mark.parametrize("kind", TYPES)
async def test_every_type_in_the_table_opens_through_open_backend(kind: str, tmp_path: Path) -> None:
    """open_backend opens a store of every type in the table, and the store reports that type; a server
    store opens at once even though nothing listens at its address (it serves once its server does)."""
    backend = await open_backend(spec_at(kind, tmp_path))
    try:
        assert isinstance(backend, Backend)
        assert backend.type_name == kind
    finally:
        await backend.close()


def test_every_type_in_the_table_is_in_the_conformance_suite() -> None:
    """No type in the table escapes the conformance suite, which defines what a working backend is."""
    assert {kind.removesuffix("-cluster").removesuffix("-journal") for kind in ALL_TYPES} == set(TYPES)


def test_an_unknown_type_is_refused_by_its_name() -> None:
    """Looking up a type the table does not hold names it."""
    with pytest.raises(ValueError, match="unknown backend type 'floppy'"):
        store_type("floppy")


def test_config_accepts_exactly_the_types_in_the_table(tmp_path: Path) -> None:
    """The config's list of known types is the table's."""
    doc = {"listen": "127.0.0.1:0", "flags": "f.yaml", "state_dir": "s",
           "backends": {"old": {"type": "floppy"}, "new": {"type": "memory"}}}
    with pytest.raises(ConfigError) as refused:
        parse_config(doc, base=tmp_path)
    assert f"must be one of {', '.join(sorted(TYPES))}, got 'floppy'" in str(refused.value)


@pytest.mark.parametrize("kind", TYPES)
def test_a_file_store_needs_a_path_and_no_other_store_takes_one(kind: str, tmp_path: Path) -> None:
    """A type the table puts at a path requires `path`; any other type refuses one."""
    base = {"listen": "127.0.0.1:0", "flags": "f.yaml", "state_dir": "s"}
    with_path = {**base, "backends": {"old": {"type": kind, "path": "x", **ADDRESSES.get(kind, {})},
                                      "new": {"type": "memory"}}}
    without = {**base, "backends": {"old": {"type": kind, **ADDRESSES.get(kind, {})}, "new": {"type": "memory"}}}
    if STORE_TYPES[kind].at_path:
        assert parse_config(with_path, base=tmp_path).old.path == tmp_path / "x"
        with pytest.raises(ConfigError, match=r"backends\.old\.path: required"):
            parse_config(without, base=tmp_path)
    else:
        assert parse_config(without, base=tmp_path).old.path is None
        with pytest.raises(ConfigError, match=rf"backends\.old\.path: a {kind} backend takes no path"):
            parse_config(with_path, base=tmp_path)


@pytest.mark.parametrize("kind", SHARED)
def test_workers_accept_a_type_the_table_says_processes_share(kind: str, tmp_path: Path) -> None:
    """`--workers 4` over two stores of a shareable type passes the check."""
    check_shareable(config_of(tmp_path, kind, kind), 4)


@pytest.mark.parametrize("kind", ALONE)
@pytest.mark.parametrize("side", ["old", "new"])
def test_workers_refuse_a_type_one_process_alone_serves(kind: str, side: str, tmp_path: Path) -> None:
    """`--workers 2` with either store of a type the table keeps to one process is refused, naming it."""
    other = SHARED[0]
    config = config_of(tmp_path, kind if side == "old" else other, kind if side == "new" else other)
    with pytest.raises(CannotSupervise) as refused:
        check_shareable(config, 2)
    assert str(refused.value) == (
        f"--workers 2: backends.{side} is a {kind} store, which one process alone can serve "
        f"(several processes can share: {', '.join(SHARED)}); use --workers 1")


@pytest.mark.parametrize("kind", TYPES)
def test_one_worker_serves_a_store_of_any_type(kind: str, tmp_path: Path) -> None:
    """`--workers 1` is a lone proxy, whatever the stores."""
    check_shareable(config_of(tmp_path, kind, kind), 1)


def test_the_shareable_types_are_sqlite_jsondir_and_the_server_stores() -> None:
    """SQLite files, jsondir folders and every server store may be shared; the legacy file and memory may not."""
    assert SHARED_BY_PROCESSES == ("sqlite", "jsondir", "postgres", "redis", "grpc")
    assert set(SERVER_TYPES) == {"postgres", "redis", "grpc"}


@pytest.mark.parametrize("kind", SERVER_TYPES)
def test_a_supervisor_holds_no_lock_for_a_server_store(kind: str, tmp_path: Path) -> None:
    """A server store has no file to lock (many proxies share it): only the file stores and the queue are locked."""
    config = config_of(tmp_path, kind, "sqlite")
    assert shared_lock_path(config.old) is None
    locks = hold_store_locks(config)
    try:
        assert [lock.path for lock in locks] == [shared_lock_path(config.new), shared_lock_path(queue_store(config.state_dir))]
    finally:
        for lock in locks:
            lock.release()


@pytest.mark.parametrize("kind", FILE_TYPES)
async def test_the_lock_file_in_the_table_is_the_one_an_open_store_holds(kind: str, tmp_path: Path) -> None:
    """While a store is open, the lock file the table names for it cannot be taken; after close it can."""
    spec = spec_at(kind, tmp_path)
    lock = STORE_TYPES[kind].lock_file(spec)
    assert lock is not None
    backend = await open_backend(spec)
    try:
        with pytest.raises(StoreLocked):
            StoreLock(lock, "test")
    finally:
        await backend.close()
    StoreLock(lock, "test").release()


def test_lock_files_sit_beside_a_file_and_inside_a_folder(tmp_path: Path) -> None:
    """A one-file store is locked by `<name>.lock` beside it, a jsondir folder by a file inside it."""
    file_lock = STORE_TYPES["sqlite"].lock_file(BackendSpec("sqlite", tmp_path / "new.sqlite"))
    assert file_lock == tmp_path / "new.sqlite.lock"
    assert STORE_TYPES["jsonfile"].lock_file(BackendSpec("jsonfile", tmp_path / "a.json")) == tmp_path / "a.json.lock"
    folder_lock = shared_lock_path(BackendSpec("jsondir", tmp_path / "docs"))
    assert folder_lock is not None
    assert folder_lock.parent == tmp_path / "docs"
    assert STORE_TYPES["memory"].lock_file(BackendSpec("memory")) is None


@pytest.mark.parametrize("kind", ALONE)
def test_no_shared_lock_for_a_type_one_process_alone_serves(kind: str, tmp_path: Path) -> None:
    """Asking for the lock a supervisor would hold over a store it may not share is a programming error."""
    with pytest.raises(ValueError, match=f"a {kind} store is served by one process alone"):
        shared_lock_path(spec_at(kind, tmp_path))


def test_a_supervisor_locks_both_stores_and_the_queue(tmp_path: Path) -> None:
    """The supervisor holds the table's lock of each store and of the replication queue's store."""
    config = config_of(tmp_path, "jsondir", "sqlite")
    locks = hold_store_locks(config)
    try:
        queue_lock = shared_lock_path(queue_store(config.state_dir))
        assert [lock.path for lock in locks] == [shared_lock_path(config.old), shared_lock_path(config.new),
                                                 queue_lock]
    finally:
        for lock in locks:
            lock.release()


async def test_a_supervisor_prepares_sqlite_files_in_wal_mode_and_leaves_the_rest(tmp_path: Path) -> None:
    """Before workers start, the SQLite stores (the queue's too) exist in WAL mode; a jsondir is untouched."""
    config = config_of(tmp_path, "jsondir", "sqlite")
    await prepare_stores(config)
    assert config.new.path is not None
    assert config.old.path is not None
    assert journal_mode(config.new.path) == "wal"
    queue_path = queue_store(config.state_dir).path
    assert queue_path is not None
    assert journal_mode(queue_path) == "wal"
    assert not config.old.path.exists()


@pytest.mark.parametrize("kind", [name for name in TYPES if STORE_TYPES[name].preparer is None])
async def test_preparing_a_type_that_needs_nothing_does_nothing(kind: str, tmp_path: Path) -> None:
    """prepare_store leaves a store of a type without a preparer as it was (not even created)."""
    await prepare_store(spec_at(kind, tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", TYPES)
def test_validate_reads_the_files_of_exactly_the_legacy_layouts(kind: str, tmp_path: Path) -> None:
    """validate reads a store's files as written only when the table gives its type a legacy layout."""
    assert reads_files(spec_at(kind, tmp_path)) is (STORE_TYPES[kind].layout is not None)


def test_no_driver_is_imported_before_its_store_is_opened() -> None:
    """Loading the config and the table imports none of the store modules: drivers load on first open."""
    probe = ("import sys, proxy.config, proxy.backends; "
             "print(' '.join(sorted(m for m in sys.modules if m.startswith('proxy.backends.'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            check=True)
    assert result.stdout.split() == ["proxy.backends.base", "proxy.backends.options", "proxy.backends.registry"]
