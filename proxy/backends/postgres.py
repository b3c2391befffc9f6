"""PostgreSQL: a key is a row `(key text COLLATE "C" primary key, value jsonb)` of one table, so
other tools can query the store (`SELECT value->>'name' FROM kv`).

The pool, the bound on every call and the driver's errors are postgrespool's; what PostgreSQL cannot
hold, postgresdocs'; the statements, postgresschema's. Gets queued together are answered by one
query and single writes queued together commit as one (postgresbatch), in the order each key's
writes were issued (postgresorder). Nothing is cached in the process: several workers and several
proxies may share one table, and each write is one statement or one transaction.

Keys sort with COLLATE "C", which compares UTF-8 bytes: the order of code points, as Python's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from psycopg.rows import TupleRow

from proxy.backends.base import DEFAULT_PAGE_SIZE, Item, Key, Value
from proxy.backends.postgresbatch import Batches, QueuedRead, QueuedWrite
from proxy.backends.postgrescopy import Rows
from proxy.backends.postgresdocs import batch_refusal, key_refusal, value_refusal
from proxy.backends.postgresorder import WriteOrder
from proxy.backends.postgrespool import REFUSED_INPUT, Connection, Server, own_copy
from proxy.backends.postgresschema import Statements, ensure_table
from proxy.backends.postgreswrites import BULK_PAGE, apply_batch, insert_else_load, load_rows
from proxy.backends.sqlitefile import prefix_upper_bound
from proxy.errors import BackendUnavailable, InvalidArgument

if TYPE_CHECKING:
    from proxy.config import BackendSpec

T = TypeVar("T")
#: A bulk write of rows on one connection within a limit: load_rows or insert_else_load.
BulkWrite = Callable[[Connection, Statements, Rows, float], Awaitable[None]]


class PostgresBackend:
    type_name = "postgres"
    ordered_scan = True

    def __init__(self, server: Server, statements: Statements, call_timeout: float, connect_timeout: float,
                 pool_size: int) -> None:
        self._server = server
        self._pool = server.pool
        self._where = server.where
        self._sql = statements
        self._call_timeout = call_timeout
        self._connect_timeout = connect_timeout
        self._order = WriteOrder()
        # Writes and reads take at most half the pool each, so neither starves the other (nor a scan).
        self._batches: Batches[QueuedWrite] = Batches(self._commit_batch, max(1, pool_size // 2), BULK_PAGE)
        self._reads: Batches[QueuedRead] = Batches(self._answer_reads, max(1, pool_size // 2), BULK_PAGE)
        self._table_ready = False
        self._table_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, spec: BackendSpec) -> PostgresBackend:
        """The store of a spec, at once: the pool connects in the background, never holding start-up."""
        options = spec.options
        return cls(await Server.open(spec), Statements(str(options["table"])), float(options["call_timeout"]),
                   float(options["connect_timeout"]), int(options["pool_size"]))

    # -- one call: bounded, its errors translated -----------------------------------------------

    async def _call(self, work: Callable[[Connection], Awaitable[T]], timeout: float | None = None,
                    turn_keys: Sequence[Key] = ()) -> T:
        """Run work on a pooled connection within the call timeout; every failure is BackendUnavailable
        (InvalidArgument for what the server refuses as malformed), its text free of the password."""
        if self._closed:
            raise BackendUnavailable(f"{self._where}: closed")
        limit = self._call_timeout if timeout is None else timeout
        turn = self._order.take(turn_keys) if turn_keys else None
        connected = False

        async def attempt() -> T:
            nonlocal connected
            try:
                if turn is not None:
                    await turn.wait()
                if not self._table_ready:
                    await self._prepare_table(limit)
                async with self._pool.connection(timeout=limit) as connection:
                    connected = True
                    return await work(connection)
            finally:
                if turn is not None:
                    turn.finish()

        return await self._server.bounded(asyncio.ensure_future(attempt()), limit, lambda: connected)

    async def _prepare_table(self, limit: float) -> None:
        """Create the table on the first call that reaches the server (opening never waits for it)."""
        async with self._table_lock:
            if not self._table_ready:
                async with self._pool.connection(timeout=limit) as connection:
                    await ensure_table(connection, self._sql)
                self._table_ready = True

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, key: Key) -> Value | None:
        """Batched with the gets queued beside it (postgresbatch): one query answers them all."""
        if key_refusal(key):
            return None  # such a key is refused at every write, so it is never stored
        if self._closed:
            raise BackendUnavailable(f"{self._where}: closed")
        read = QueuedRead(key, asyncio.get_running_loop().create_future())
        self._reads.submit(read)
        text = await self._server.bounded(read.done, self._call_timeout, lambda: self._server.reachable)
        return None if text is None else text.encode()

    async def _on_batch_connection(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Run one queued batch's work on a pooled connection within the call timeout, the table made
        first if need be. Running past it is BackendUnavailable saying whether a connection was had;
        every other failure is left to the caller, which answers each waiting call of the batch."""
        limit, connected = self._call_timeout, False
        try:
            async with asyncio.timeout(limit):
                if not self._table_ready:
                    await self._prepare_table(limit)
                async with self._pool.connection(timeout=limit) as connection:
                    connected = True
                    return await work(connection)
        except TimeoutError:
            raise BackendUnavailable(self._server.late(limit, connected)) from None

    async def _answer_reads(self, batch: list[QueuedRead]) -> None:
        async def fetch(connection: Connection) -> dict[str, str]:
            if len(batch) == 1:
                row = await (await connection.execute(self._sql.get, (batch[0].key,))).fetchone()
                return {} if row is None else {batch[0].key: str(row[0])}
            keys = list(dict.fromkeys(read.key for read in batch))
            rows = await (await connection.execute(self._sql.get_many, (keys,))).fetchall()
            return {str(key): str(value) for key, value in rows}

        try:
            found = await self._on_batch_connection(fetch)
        except Exception as exc:  # BackendUnavailable passes through translated() as it is
            error = self._server.translated(exc, self._call_timeout)
        else:
            for read in batch:
                if not read.done.done():
                    read.done.set_result(found.get(read.key))
            return
        for read in batch:
            if not read.done.done():
                read.done.set_exception(own_copy(error))

    async def get_many(self, keys: Sequence[Key]) -> list[Value | None]:
        found: dict[str, bytes] = {}
        storable = [key for key in keys if not key_refusal(key)]
        for start in range(0, len(storable), BULK_PAGE):
            chunk = storable[start : start + BULK_PAGE]

            async def work(connection: Connection, chunk: list[str] = chunk) -> list[TupleRow]:
                return await (await connection.execute(self._sql.get_many, (chunk,))).fetchall()

            for key, value in await self._call(work):
                found[str(key)] = str(value).encode()
        return [found.get(key) for key in keys]

    async def has(self, key: Key) -> bool:
        if key_refusal(key):
            return False

        async def work(connection: Connection) -> bool:
            return await (await connection.execute(self._sql.has, (key,))).fetchone() is not None

        return await self._call(work)

    async def keys(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Key]]:
        async for page in self._pages(False, prefix, page_size):
            yield [str(row[0]) for row in page]

    async def scan(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Item]]:
        async for page in self._pages(True, prefix, page_size):
            yield [(str(row[0]), str(row[1]).encode()) for row in page]

    async def _pages(self, values: bool, prefix: str, page_size: int) -> AsyncIterator[list[TupleRow]]:
        # Keyset pagination: each page is an index range seek after the last key seen, so a key written
        # or deleted meanwhile never makes another appear twice. The prefix is the range
        # [prefix, upper) rather than LIKE, where %, _ and \ would be wildcards or escapes.
        if "\x00" in prefix:
            return  # no stored key holds NUL (they are refused), so none starts with this prefix
        upper = prefix_upper_bound(prefix)
        after: str | None = None
        while True:
            statement = self._sql.page(values, after is not None, upper is not None)
            bound = (after if after is not None else prefix, *((upper,) if upper is not None else ()), page_size)

            async def work(connection: Connection, statement: bytes = statement,
                           bound: tuple[object, ...] = bound) -> list[TupleRow]:
                return await (await connection.execute(statement, bound)).fetchall()

            rows = await self._call(work)
            if rows:
                yield rows
            if len(rows) < page_size:
                return
            after = str(rows[-1][0])

    # -- writes --------------------------------------------------------------------------------

    async def set(self, key: Key, value: Value) -> None:
        await self._write(key, _storable(key, value))

    async def delete(self, key: Key) -> bool:
        if key_refusal(key):
            return False  # never stored, so nothing to remove
        return await self._write(key, None)

    async def _write(self, key: Key, document: str | None) -> bool:
        """One set or delete, group-committed with the single writes queued beside it (postgresbatch)."""
        if self._closed:
            raise BackendUnavailable(f"{self._where}: closed")
        turn = self._order.take((key,))
        queued: asyncio.Future[bool] | None = None

        async def attempt() -> bool:
            nonlocal queued
            try:
                await turn.wait()
                queued = asyncio.get_running_loop().create_future()
                self._batches.submit(QueuedWrite(key, document, queued))
                # shield: a caller giving up must not cancel a write its batch shares with others.
                return await asyncio.shield(queued)
            finally:
                # The turn passes on once the write itself has ended, even when its caller gave up first.
                turn.finish(queued)

        # Late with the last connection attempt failed: that failure is the likeliest why, so say it.
        return await self._server.bounded(asyncio.ensure_future(attempt()), self._call_timeout,
                                   lambda: self._server.reachable)

    async def _commit_batch(self, batch: list[QueuedWrite]) -> None:
        """Apply one batch of single writes in one statement or transaction and answer each write."""
        limit = self._call_timeout
        try:
            existed = await self._on_batch_connection(lambda connection: apply_batch(connection, self._sql, batch))
        except REFUSED_INPUT as exc:
            if len(batch) == 1:
                error: Exception = self._server.translated(exc, limit)
            else:  # one write the server refused must not fail the others: each goes alone
                for write in batch:
                    await self._commit_batch([write])
                return
        except Exception as exc:
            error = self._server.translated(exc, limit)
        else:
            for write in batch:
                if not write.done.done():
                    write.done.set_result(write.key in existed)
            return
        for write in batch:
            if not write.done.done():
                write.done.set_exception(own_copy(error))

    async def set_many(self, items: Sequence[Item]) -> None:
        """One transaction: the rows are copied into a temporary table, then upserted from it at once.

        COPY and one upsert load about 1.2x (500 rows) to 3.7x (100k rows) as fast as unnest upserts
        (bench/postgres_store.py). The last value of a key given twice wins, as if set one after
        another; every item is checked before anything is written; the upsert takes its rows in key
        order, so two bulk writes sharing keys (two processes) lock them in one order, never deadlocking.
        """
        await self._bulk(items, load_rows)

    async def load_many(self, items: Sequence[Item]) -> None:
        """set_many of keys the table is believed to lack (a migrate into an empty table): one COPY into
        the table itself, or set_many's upsert when one of the keys is there after all."""
        await self._bulk(items, insert_else_load)

    async def _bulk(self, items: Sequence[Item], write: BulkWrite) -> None:
        latest = {key: value for key, value in items}
        if not latest:
            return
        rows = Rows(list(latest), list(latest.values()))
        refused = batch_refusal(rows.keys, rows.values)
        if refused is not None:
            raise InvalidArgument(f"postgres store: {refused[1]}")  # no key: messages may reach logs
        limit = self._call_timeout * -(-len(rows.keys) // BULK_PAGE)  # a call_timeout per thousand rows

        async def work(connection: Connection) -> None:
            await write(connection, self._sql, rows, limit)

        await self._call(work, timeout=limit, turn_keys=list(latest))

    # -- health and end ------------------------------------------------------------------------

    async def probe(self) -> None:
        """One `SELECT 1` on a pooled connection, within connect_timeout."""

        async def work(connection: Connection) -> None:
            await connection.execute("SELECT 1")

        await self._call(work, timeout=self._connect_timeout)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._batches.drain()  # writes already queued are committed and answered first
        await self._reads.drain()
        await self._server.close()


def _storable(key: Key, value: Value) -> str:
    """The document as text for a jsonb parameter; InvalidArgument for what PostgreSQL cannot hold."""
    why = key_refusal(key) or value_refusal(value)
    if why is not None:
        raise InvalidArgument(f"postgres store: {why}")
    return value.decode("utf-8")
