"""The legacy store: one JSON object in one file, each member a key, still the old application's file.

Without a journal (flush_interval unset, the default) every write replaces the whole file
atomically (proxy/durable.py) before it is acknowledged, so the old application, reading the file
directly, never sees it torn. Concurrent writers share one rewrite (group commit): writes queue into
a batch, and one flush applies the batch to the committed contents, rewrites the file once, and
answers every writer of the batch.

With flush_interval set, a write is acknowledged once appended and fsynced to the journal beside
the file (proxy/backends/jsonjournal.py; concurrent writers share one fsync), and the file is
rewritten whole from memory, atomically as above, about every flush_interval and at close: a
rewrite starts flush_interval after the oldest write the file lacks, less a small lead (10 ms) for
the event loop's late timers, so the file is never more than flush_interval plus that rewrite
behind the journal.
After each rewrite the journal is replaced by one holding only the writes the file still lacks.
Opening replays a journal left by a crash into the file before serving, whichever mode opens it.

Reads are served from memory: the committed contents, each value kept as its compact JSON text, so
a read never parses and a rewrite never re-serializes a value. The old application may still write
the file itself; a poll notices a changed file (inode, mtime, size) and serves the new contents,
and every rewrite checks first, so turnout never writes over a change it has not seen.

When the old application changed the file, its new contents are taken whole and merged with the
journaled writes the file does not hold yet (acknowledged since the last rewrite): each such write
is kept over the new contents unless the old application changed that same key too (its value is
no longer the one turnout's write replaced) and did so later (the file's mtime is after the write).
So every key turnout did not write takes the old application's value; a key only turnout wrote
keeps turnout's value, even though the old application, saving its whole in-memory index, wrote
that key's old value back; and of two writes to one key the later wins. An acknowledged write lost
that way is never silent: it is logged with its key and counted (`superseded`). A key turnout
deleted stays deleted unless the old application later writes it again. A failed rewrite changes
nothing in memory; the journal keeps the writes and the rewrite is tried again.

This module is the store's face (open, reads, writes, close); the contents in memory and the old
application's changes live in jsonfileindex.py, the journal's appends and the file's rewrites in
jsonfileflusher.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from proxy.backends.base import DEFAULT_PAGE_SIZE, Item, Key, Value
from proxy.backends.groupcommit import GroupCommit
from proxy.backends.jsonfileflusher import JournalFlusher
from proxy.backends.jsonfileindex import (
    FileIndex,
    Op,
    apply_op,
    replay_journal,
    watch_for_changes,
)
from proxy.backends.jsonjournal import JournalWriter, drop_journal, journal_path
from proxy.backends.legacyfile import Signature, create_empty_store, read_store, render_store, signature
from proxy.durable import StoreLock, replace_file, sibling_lock
from proxy.errors import BackendUnavailable


class JsonFileBackend:
    type_name = "jsonfile"
    ordered_scan = True

    def __init__(self, path: Path, lock: StoreLock, data: dict[Key, Value], sig: Signature, group_commit: bool,
                 journal: JournalWriter | None = None, flush_interval: float | None = None) -> None:
        self.path = path
        self._lock = lock
        self._index = FileIndex(path, data, sig)
        self._flusher: JournalFlusher | None = None
        catch_up: Callable[[], Awaitable[None]]
        if (journal is None) != (flush_interval is None):
            raise ValueError("jsonfile: a journal needs its flush_interval, and flush_interval a journal")
        if journal is None or flush_interval is None:
            self._commits: GroupCommit[Op] = GroupCommit(self._flush, f"jsonfile {path}", enabled=group_commit)
            # Without a journal a flush is the rewrite, so the poll and the flushes share one lock.
            file_lock, catch_up = self._commits.lock, self._catch_up
        else:
            self._flusher = flusher = JournalFlusher(self._index, journal, flush_interval, group_commit)
            self._commits, file_lock, catch_up = flusher.commits, flusher.file_lock, flusher.catch_up
        self._file_lock = file_lock
        self._poller = asyncio.create_task(watch_for_changes(file_lock, catch_up), name=f"jsonfile-poll {path.name}")
        self._closed = False

    @classmethod
    async def open(cls, path: Path, group_commit: bool = True, flush_interval: float | None = None) -> JsonFileBackend:
        """Open the store; a journal found beside the file is replayed into it first, in either mode."""

        def load() -> tuple[StoreLock, dict[Key, Value], Signature, JournalWriter | None]:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = StoreLock(sibling_lock(path), f"jsonfile {path}")
            try:
                missing = not path.exists()
                if missing:
                    create_empty_store(path)
                data, sig = read_store(path)
                # A file gone missing is put back whole, as while serving: no one's change to merge.
                sig, _ = replay_journal(path, data, sig, merge=not missing)
                if flush_interval is None:
                    drop_journal(path)
                    return lock, data, sig, None
                journal = JournalWriter(journal_path(path))
                journal.start(sig, 0)
                return lock, data, sig, journal
            except BaseException:
                lock.release()
                raise

        try:
            lock, data, sig, journal = await asyncio.to_thread(load)
        except OSError as exc:
            raise BackendUnavailable(f"jsonfile {path}: {exc.strerror or exc}") from exc
        return cls(path, lock, data, sig, group_commit, journal, flush_interval)

    # -- reads: the committed contents, in memory ----------------------------------------------

    async def get(self, key: Key) -> Value | None:
        self._check_open()
        return self._index.data.get(key)

    async def get_many(self, keys: Sequence[Key]) -> list[Value | None]:
        self._check_open()
        data = self._index.data
        return [data.get(key) for key in keys]

    async def has(self, key: Key) -> bool:
        self._check_open()
        return key in self._index.data

    async def keys(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Key]]:
        async for page in self.scan(prefix, page_size):
            yield [key for key, _ in page]

    async def scan(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Item]]:
        self._check_open()
        # Without a journal a flush swaps in a new dict whole, so holding it is a snapshot; with one,
        # writes change the dict in place (a copy per write would cost milliseconds), so copy it.
        data = self._index.data if self._flusher is None else dict(self._index.data)
        matching = sorted(key for key in data if key.startswith(prefix)) if prefix else sorted(data)
        for start in range(0, len(matching), page_size):
            page = matching[start : start + page_size]
            yield list(zip(page, map(data.__getitem__, page), strict=True))

    # -- writes: batched, one rewrite (or one journal append) per batch ---------------------------

    async def set(self, key: Key, value: Value) -> None:
        await self._submit([(key, value)])

    async def delete(self, key: Key) -> bool:
        return (await self._submit([(key, None)]))[0]

    async def set_many(self, items: Sequence[Item]) -> None:
        if items:
            await self._submit(list(items))

    async def _submit(self, ops: list[Op]) -> list[bool]:
        """Queue ops; returns, once they are on disk, whether each op's key existed before it."""
        self._check_open()
        return await self._commits.submit(ops)

    async def _flush(self, ops: list[Op]) -> list[bool]:
        """Without the journal: one rewrite of the whole file for the batch."""
        # Catch up with the disk first, in its own step: if the rewrite then fails, we still serve
        # (and next time build on) the old application's change, never the contents it replaced.
        await self._catch_up()
        data, sig, existed = await asyncio.to_thread(self._apply_and_write, self._index.data, ops)
        # Only now, with the file on disk, do readers see the new contents.
        self._index.data, self._index.sig = data, sig
        return existed

    def _apply_and_write(self, base: dict[Key, Value], ops: list[Op]) -> tuple[dict[Key, Value], Signature, list[bool]]:
        data = dict(base)
        existed = []
        for key, value in ops:
            existed.append(key in data)
            apply_op(data, key, value)
        try:
            stat = replace_file(self.path, render_store(data))
        except OSError as exc:
            raise BackendUnavailable(f"jsonfile {self.path}: write failed: {exc.strerror or exc}") from exc
        return data, signature(stat), existed

    async def _catch_up(self) -> None:
        """Without the journal: serve the file's new contents if the old application changed it."""
        changed = await asyncio.to_thread(self._index.read_if_changed)
        if changed is not None:
            self._index.adopt(changed)

    # -- what tests, benchmarks and operators see ------------------------------------------------

    @property
    def rewrites(self) -> int:
        """Rewrites of the file so far: lets tests and benchmarks see group commit at work."""
        return self._commits.flushes if self._flusher is None else self._flusher.rewrites

    @property
    def journal_appends(self) -> int:
        """Appends (each one fsync) to the journal so far: concurrent writers share them."""
        return 0 if self._flusher is None else self._commits.flushes

    @property
    def unflushed(self) -> int:
        """Journaled writes the file does not hold yet."""
        return len(self._index.unflushed)

    @property
    def superseded(self) -> int:
        """Acknowledged writes replaced by a later change of the old application to their key."""
        return self._index.superseded

    @property
    def reloads(self) -> int:
        """Reloads after the file changed on disk under us."""
        return self._index.reloads

    @property
    def lags(self) -> Sequence[float]:
        """Seconds from each rewrite's oldest write being acknowledged to the file holding it."""
        return () if self._flusher is None else self._flusher.lags

    @property
    def rewrite_seconds(self) -> Sequence[float]:
        """Seconds each rewrite took, from its start (reading the old application's change first) to the rename."""
        return () if self._flusher is None else self._flusher.rewrite_seconds

    @property
    def rewrite_late(self) -> Sequence[float]:
        """Seconds each rewrite started after it was due (the event loop's timer and other work)."""
        return () if self._flusher is None else self._flusher.rewrite_late

    # -- close ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BackendUnavailable(f"jsonfile {self.path}: closed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self._commits.wait_idle()
        if self._flusher is not None:
            await self._flusher.stop()
        self._poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._poller
        if self._flusher is not None:
            self._flusher.close_journal()
        self._lock.release()
