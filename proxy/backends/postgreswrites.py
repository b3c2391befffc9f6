"""The statements of the postgres store's writes that touch many rows: a batch of single writes, and
a bulk load (set_many), each in one transaction.

Rows are always written in key order, so two transactions sharing keys (two processes) lock them in
one order and never deadlock; a batch mixing deletes and sets can still meet another process's in
the other order, and is then run again (the server rolled it back whole).
"""

from __future__ import annotations

import contextlib

import psycopg

from proxy.backends.postgresbatch import QueuedWrite
from proxy.backends.postgrescopy import Rows
from proxy.backends.postgrespool import Connection
from proxy.backends.postgresschema import Statements

#: Rows per statement of an unnest upsert or a get_many: one round trip per thousand rows, and the
#: parameters of one statement stay a few megabytes.
BULK_PAGE = 1000
#: Runs of a batch of single writes that met a deadlock with another process before it fails.
DEADLOCK_RETRIES = 2


async def apply_batch(connection: Connection, sql: Statements, batch: list[QueuedWrite]) -> frozenset[str]:
    """The writes of a batch (distinct keys); returns the deleted keys that existed."""
    deletes = [w.key for w in batch if w.document is None]
    sets = sorted((w.key, w.document) for w in batch if w.document is not None)
    if len(batch) == 1:  # one statement, no transaction: a lone write pays one round trip
        if sets:
            await connection.execute(sql.upsert, sets[0])
            return frozenset()
        deleted = (await connection.execute(sql.delete, (deletes[0],))).rowcount
        return frozenset(deletes) if deleted else frozenset()
    for attempt in range(DEADLOCK_RETRIES + 1):
        try:
            async with connection.transaction():
                existed: frozenset[str] = frozenset()
                if deletes:
                    rows = await (await connection.execute(sql.delete_many, (deletes,))).fetchall()
                    existed = frozenset(str(row[0]) for row in rows)
                if sets:
                    await connection.execute(sql.upsert_many, ([k for k, _ in sets], [v for _, v in sets]))
                return existed
        except psycopg.errors.DeadlockDetected:
            if attempt == DEADLOCK_RETRIES:
                raise
    raise AssertionError("unreachable")


async def load_rows(connection: Connection, sql: Statements, rows: Rows, limit: float) -> None:
    """Upsert every row in one transaction: COPY into a temporary table, then one upsert from it
    (about 1.2x to 3.7x as fast as unnest upserts, bench/postgres_store.py)."""
    async with connection.transaction():
        await _bound_statements(connection, limit)
        if await _load_table(connection, sql):
            await _copy(connection, sql.copy_load, rows)
            await connection.execute(sql.upsert_loaded)
            return
        ordered = sorted(zip(rows.keys, rows.texts(), strict=True))  # key order: the upsert's lock order
        for start in range(0, len(ordered), BULK_PAGE):
            page = ordered[start : start + BULK_PAGE]
            await connection.execute(sql.upsert_many, ([k for k, _ in page], [v for _, v in page]))


async def _copy(connection: Connection, statement: bytes, rows: Rows) -> None:
    async with connection.cursor().copy(statement) as copy:
        text = rows.copy_text()
        if text is not None:
            await copy.write(text)
            return
        for row in zip(rows.keys, rows.texts(), strict=True):
            await copy.write_row(row)


async def insert_rows(connection: Connection, sql: Statements, rows: Rows, limit: float) -> bool:
    """COPY every (key, document text) straight into the table in one transaction, as a bulk load of
    keys the table lacks (no temporary table, no upsert: about twice as fast, bench/migrate_servers.py).
    False, with nothing written, when a key was there after all (or a concurrent writer of the same
    keys met this load in a deadlock): the caller then upserts."""
    # BEGIN and the statement bound in one simple query: one round trip and no savepoint bookkeeping,
    # where psycopg's transaction() and a set_config statement take two (this path runs per batch of
    # a migrate: about a tenth of its CPU).
    await connection.execute(f"BEGIN; SET LOCAL statement_timeout = {int(limit * 1000) + 1000}".encode())
    try:
        await _copy(connection, sql.copy_table, rows)
    except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected):
        await connection.execute(b"ROLLBACK")
        return False
    except Exception:
        # The connection may be broken: then the pool discards it, as it rolls back one returned in a transaction.
        with contextlib.suppress(psycopg.Error):
            await connection.execute(b"ROLLBACK")
        raise
    await connection.execute(b"COMMIT")
    return True


async def insert_else_load(connection: Connection, sql: Statements, rows: Rows, limit: float) -> None:
    """A bulk load of keys the table is believed to lack: insert_rows, or load_rows' upsert when one of
    the keys was there after all."""
    if not await insert_rows(connection, sql, rows, limit):
        await load_rows(connection, sql, rows, limit)


async def _bound_statements(connection: Connection, limit: float) -> None:
    """The server's bound on one statement, raised for this transaction to the call's own limit."""
    await connection.execute("SELECT set_config('statement_timeout', %s, true)", (str(int(limit * 1000) + 1000),))


async def _load_table(connection: Connection, sql: Statements) -> bool:
    """Create the temporary table of a bulk load; False when the role may not create temporary tables
    (REVOKE TEMP), where the rows go as unnest upserts instead."""
    try:
        async with connection.transaction():  # a savepoint: a refusal leaves the load's transaction usable
            await connection.execute(sql.create_load)
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True
