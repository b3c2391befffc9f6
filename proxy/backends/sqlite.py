"""SQLite: the embedded default new store.

WAL with synchronous=FULL, so a write is durable when acknowledged. Writes are group-committed: one
writer thread takes every queued write, applies them in one transaction and resolves each caller's
future after the COMMIT, so sixteen concurrent writers cost one fsync, not sixteen. Reads run on
their own connections in a small thread pool, so neither reads nor writes ever stall the event loop;
concurrent gets are batched too, one thread hop for all the gets queued while the last batch ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from proxy.backends.base import DEFAULT_PAGE_SIZE, Item, Key, Value
from proxy.backends.sqlitefile import blob, connect, prefix_upper_bound, prepared, translated_errors
from proxy.backends.sqlitewriter import GroupCommitWriter
from proxy.durable import StoreLock, sibling_lock
from proxy.errors import BackendUnavailable

READ_THREADS = 2


Rows = list[tuple[object, ...]]


@dataclass(slots=True)
class _PointRead:
    """One queued get or has: answered with its rows, in a batch with the reads queued beside it."""

    sql: str
    args: tuple[object, ...]
    done: asyncio.Future[Rows]


class SqliteBackend:
    type_name = "sqlite"
    ordered_scan = True

    def __init__(self, path: Path, writer: sqlite3.Connection, lock: StoreLock) -> None:
        self.path = path
        self._lock = lock
        self._writer = GroupCommitWriter(path, writer)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="sqlite-read")
        self._queued_reads: list[_PointRead] = []
        self._read_batches = 0  # point-read batches handed to the pool and not yet answered
        self._reads_drained: asyncio.Future[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> SqliteBackend:
        def prepare() -> tuple[sqlite3.Connection, StoreLock]:
            path.parent.mkdir(parents=True, exist_ok=True)
            # SQLite would let two processes write, but a migration must know no proxy writes meanwhile.
            lock = StoreLock(sibling_lock(path), f"sqlite {path}")
            try:
                return prepared(path), lock
            except BaseException:
                lock.release()
                raise

        return cls(path, *await asyncio.to_thread(prepare))

    @property
    def commits(self) -> int:
        """Transactions committed so far: lets tests and benchmarks see group commit at work."""
        return self._writer.commits

    # -- reads ---------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = connect(self.path)
            self._local.connection = connection
            with self._readers_lock:
                self._readers.append(connection)
        return connection

    async def _read(self, sql: str, args: tuple[object, ...]) -> Rows:
        """One read on a reader thread: for scans and bulk reads, which are worth a thread hop each."""
        if self._closed:
            raise BackendUnavailable(f"sqlite {self.path}: closed")

        def run() -> Rows:
            with translated_errors(self.path):
                return self._reader().execute(sql, args).fetchall()

        return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    async def _point_read(self, sql: str, args: tuple[object, ...]) -> Rows:
        """A small read, batched: concurrent gets share one thread hop and one event-loop wake-up.

        A hop per get costs several times the lookup itself; under load the reads that queue while
        a batch runs go together in the next one, so the cost per get falls as the load rises.
        """
        if self._closed:
            raise BackendUnavailable(f"sqlite {self.path}: closed")
        loop = asyncio.get_running_loop()
        read = _PointRead(sql, args, loop.create_future())
        self._queued_reads.append(read)
        if self._read_batches < READ_THREADS:
            self._dispatch_reads(loop)
        return await read.done

    def _dispatch_reads(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._queued_reads = self._queued_reads, []
        self._read_batches += 1
        self._pool.submit(self._run_reads, loop, batch)

    def _run_reads(self, loop: asyncio.AbstractEventLoop, batch: list[_PointRead]) -> None:
        """On a reader thread: run the batch, then answer all of it with one call into the loop."""
        outcomes: list[Rows | BackendUnavailable] = []
        for read in batch:
            try:
                with translated_errors(self.path):
                    outcomes.append(self._reader().execute(read.sql, read.args).fetchall())
            except BackendUnavailable as exc:
                outcomes.append(exc)
            except Exception as exc:  # a read left unanswered would hang its caller
                outcomes.append(BackendUnavailable(f"sqlite {self.path}: read failed: {exc!r}"))
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits for the answers
            loop.call_soon_threadsafe(self._deliver_reads, loop, batch, outcomes)

    def _deliver_reads(
        self, loop: asyncio.AbstractEventLoop, batch: list[_PointRead], outcomes: list[Rows | BackendUnavailable]
    ) -> None:
        self._read_batches -= 1
        for read, outcome in zip(batch, outcomes, strict=True):
            if read.done.done():
                continue  # the caller gave up (cancelled)
            if isinstance(outcome, BackendUnavailable):
                read.done.set_exception(outcome)
            else:
                read.done.set_result(outcome)
        if self._queued_reads:
            self._dispatch_reads(loop)
        elif self._read_batches == 0 and self._reads_drained is not None and not self._reads_drained.done():
            self._reads_drained.set_result(None)

    async def get(self, key: Key) -> Value | None:
        rows = await self._point_read("SELECT value FROM kv WHERE key = ?", (key,))
        return blob(rows[0][0]) if rows else None

    async def get_many(self, keys: Sequence[Key]) -> list[Value | None]:
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in await self._read(f"SELECT key, value FROM kv WHERE key IN ({marks})", tuple(chunk)):
                found[str(key)] = blob(value)
        return [found.get(key) for key in keys]

    async def has(self, key: Key) -> bool:
        return bool(await self._point_read("SELECT 1 FROM kv WHERE key = ?", (key,)))

    async def keys(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Key]]:
        async for page in self._pages("SELECT key FROM kv", prefix, page_size):
            yield [str(row[0]) for row in page]

    async def scan(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Item]]:
        async for page in self._pages("SELECT key, value FROM kv", prefix, page_size):
            yield [(str(row[0]), blob(row[1])) for row in page]

    async def _pages(self, select: str, prefix: str, page_size: int) -> AsyncIterator[list[tuple[object, ...]]]:
        # Keyset pagination over the primary key: only one page is ever in memory, and a key
        # written or deleted meanwhile cannot make another key appear twice. The prefix is a
        # range [prefix, upper) on the key, not LIKE (where `%` and `_` are wildcards) nor
        # substr (which stops at a NUL inside a key), and every page is an index seek.
        upper = prefix_upper_bound(prefix)
        tail = " ORDER BY key LIMIT ?" if upper is None else " AND key < ? ORDER BY key LIMIT ?"
        extra: tuple[object, ...] = (page_size,) if upper is None else (upper, page_size)
        sql, start = f"{select} WHERE key >= ?{tail}", prefix
        while True:
            rows = await self._read(sql, (start, *extra))
            if not rows:
                return
            yield rows
            if len(rows) < page_size:
                return
            sql, start = f"{select} WHERE key > ?{tail}", str(rows[-1][0])

    # -- writes --------------------------------------------------------------------------------

    async def _write(self, key: Key | None, value: Value | None, items: Sequence[Item] | None) -> bool:
        if self._closed:
            raise BackendUnavailable(f"sqlite {self.path}: closed")
        done = self._writer.submit(key, value, items)
        # shield: a caller that gives up (deadline) must not cancel a write other callers share.
        return await asyncio.shield(asyncio.wrap_future(done))

    async def set(self, key: Key, value: Value) -> None:
        await self._write(key, value, None)

    async def delete(self, key: Key) -> bool:
        return await self._write(key, None, None)

    async def set_many(self, items: Sequence[Item]) -> None:
        if items:
            await self._write(None, None, list(items))


    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Both block, so they run off the event loop: pending writes commit, running reads end.
        await asyncio.to_thread(self._writer.stop)
        if self._read_batches:
            # Answer the point reads already queued before the pool stops taking work.
            self._reads_drained = asyncio.get_running_loop().create_future()
            await self._reads_drained
        await asyncio.to_thread(self._pool.shutdown, wait=True)
        with self._readers_lock:
            for connection in self._readers:
                connection.close()
        self._lock.release()
