"""The legacy store: one JSON object in one file, each member a key, still the old application's file.

Every write replaces the whole file atomically (proxy/durable.py) before it is acknowledged, so the
old application, reading the file directly, never sees it torn. Concurrent writers share one
rewrite (group commit): writes queue into a batch, and one flush applies the batch to the committed
contents, rewrites the file once, and answers every writer of the batch.

Reads are served from memory: the committed contents, each value kept as its compact JSON text, so
a read never parses and a rewrite never re-serializes a value. The old application may still write
the file itself; a poll notices a changed file (inode, mtime, size) and serves the new contents,
and every flush checks first, so turnout never writes over a change it has not seen. A flush that
fails changes nothing in memory: readers keep seeing exactly what is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from proxy.backends.base import DEFAULT_PAGE_SIZE, Item, Key, Value
from proxy.backends.groupcommit import GroupCommit
from proxy.backends.legacyfile import Signature, create_empty_store, read_store, render_store, signature
from proxy.durable import StoreLock, replace_file, sibling_lock
from proxy.errors import BackendUnavailable

log = logging.getLogger(__name__)

#: How often the file is checked for changes made by the old application.
POLL_INTERVAL_S = 0.1

#: One queued write: (key, value) for a set, (key, None) for a delete.
Op = tuple[Key, Value | None]


class JsonFileBackend:
    type_name = "jsonfile"
    ordered_scan = True

    def __init__(self, path: Path, lock: StoreLock, data: dict[Key, Value], sig: Signature, group_commit: bool) -> None:
        self.path = path
        self._lock = lock
        self._data = data
        self._sig = sig
        self._commits: GroupCommit[Op] = GroupCommit(self._flush, f"jsonfile {path}", enabled=group_commit)
        self._poller = asyncio.create_task(self._poll(), name=f"jsonfile-poll {path.name}")
        self._closed = False
        #: Reloads after the file changed on disk under us.
        self.reloads = 0

    @classmethod
    async def open(cls, path: Path, group_commit: bool = True) -> JsonFileBackend:
        def load() -> tuple[StoreLock, dict[Key, Value], Signature]:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = StoreLock(sibling_lock(path), f"jsonfile {path}")
            try:
                if not path.exists():
                    create_empty_store(path)
                return lock, *read_store(path)
            except BaseException:
                lock.release()
                raise

        try:
            lock, data, sig = await asyncio.to_thread(load)
        except OSError as exc:
            raise BackendUnavailable(f"jsonfile {path}: {exc.strerror or exc}") from exc
        return cls(path, lock, data, sig, group_commit)

    # -- reads: the committed contents, in memory ----------------------------------------------

    async def get(self, key: Key) -> Value | None:
        self._check_open()
        return self._data.get(key)

    async def get_many(self, keys: Sequence[Key]) -> list[Value | None]:
        self._check_open()
        data = self._data
        return [data.get(key) for key in keys]

    async def has(self, key: Key) -> bool:
        self._check_open()
        return key in self._data

    async def keys(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Key]]:
        async for page in self.scan(prefix, page_size):
            yield [key for key, _ in page]

    async def scan(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Item]]:
        self._check_open()
        data = self._data  # a flush swaps in a new dict whole, so this snapshot stays consistent
        matching = sorted(key for key in data if key.startswith(prefix))
        for start in range(0, len(matching), page_size):
            yield [(key, data[key]) for key in matching[start : start + page_size]]

    # -- writes: batched, one rewrite per batch ------------------------------------------------

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
        # Catch up with the disk first, in its own step: if the rewrite then fails, we still serve
        # (and next time build on) the old application's change, never the contents it replaced.
        self._adopt(await asyncio.to_thread(self._read_if_changed))
        data, sig, existed = await asyncio.to_thread(self._apply_and_write, self._data, ops)
        # Only now, with the file on disk, do readers see the new contents.
        self._data, self._sig = data, sig
        return existed

    @property
    def rewrites(self) -> int:
        """Rewrites of the file so far: lets tests and benchmarks see group commit at work."""
        return self._commits.flushes

    def _apply_and_write(self, base: dict[Key, Value], ops: list[Op]) -> tuple[dict[Key, Value], Signature, list[bool]]:
        data = dict(base)
        existed = []
        for key, value in ops:
            existed.append(key in data)
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        try:
            stat = replace_file(self.path, render_store(data))
        except OSError as exc:
            raise BackendUnavailable(f"jsonfile {self.path}: write failed: {exc.strerror or exc}") from exc
        return data, signature(stat), existed

    def _read_if_changed(self) -> tuple[dict[Key, Value], Signature] | None:
        """The file's contents and signature if someone else changed it since we last read or wrote it.

        Runs in a worker thread and changes nothing, so a failure half-way leaves the state whole.
        """
        try:
            current = signature(self.path.stat())
        except FileNotFoundError:
            return None  # deleted under us: our next rewrite puts it back whole
        except OSError as exc:
            raise BackendUnavailable(f"jsonfile {self.path}: cannot check for changes: {exc.strerror or exc}") from exc
        if current == self._sig:
            return None
        try:
            return read_store(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendUnavailable(f"jsonfile {self.path}: cannot read: {exc.strerror or exc}") from exc

    def _adopt(self, changed: tuple[dict[Key, Value], Signature] | None) -> None:
        if changed is None:
            return
        self._data, self._sig = changed
        self.reloads += 1
        log.info("jsonfile %s changed on disk; serving its new contents (%d keys)", self.path, len(self._data))

    async def _poll(self) -> None:
        refused = ""  # the last warning, so a file left broken is reported once, not ten times a second
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            if self._commits.lock.locked():
                continue  # a flush is checking for itself
            try:
                async with self._commits.lock:
                    self._adopt(await asyncio.to_thread(self._read_if_changed))
                refused = ""
            except BackendUnavailable as exc:
                # A half-written file from a non-atomic writer: keep serving what we have, retry.
                if str(exc) != refused:
                    refused = str(exc)
                    log.warning("%s; still serving the last contents read", exc)

    def _check_open(self) -> None:
        if self._closed:
            raise BackendUnavailable(f"jsonfile {self.path}: closed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self._commits.wait_idle()
        self._poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._poller
        self._lock.release()
