"""The table under a postgres store and every statement run on it, composed once per store.

The table name is checked by config validation (an SQL name, optionally schema.table) and quoted
here, so a reserved word works as a name; quoting keeps its case as written.
"""

from __future__ import annotations

import contextlib

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow


class Statements:
    """Every statement on one table, rendered to bytes once: psycopg would otherwise render a composed
    statement again on every call (and it caches prepared statements by their bytes)."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.name = sql.Identifier(*table.split("."))
        self.create = self._render('CREATE TABLE IF NOT EXISTS {t} (key text COLLATE "C" PRIMARY KEY, '
                                   "value jsonb NOT NULL)")
        self.get = self._render("SELECT value::text FROM {t} WHERE key = %s")
        self.get_many = self._render("SELECT key, value::text FROM {t} WHERE key = ANY(%s::text[])")
        self.has = self._render("SELECT 1 FROM {t} WHERE key = %s")
        self.upsert = self._render("INSERT INTO {t} (key, value) VALUES (%s, %s::jsonb) "
                                   "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value")
        self.upsert_many = self._render(
            "INSERT INTO {t} (key, value) SELECT k, v::jsonb FROM unnest(%s::text[], %s::text[]) AS u(k, v) "
            'ORDER BY k COLLATE "C" ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value')
        #: A bulk load of keys the table lacks, straight into it (a duplicate key fails it whole).
        self.copy_table = self._render("COPY {t} (key, value) FROM STDIN")
        #: The temporary table a bulk write is copied into first, dropped when its transaction ends.
        self.create_load = b"CREATE TEMP TABLE turnout_load (key text, value text) ON COMMIT DROP"
        self.copy_load = b"COPY turnout_load (key, value) FROM STDIN"
        self.upsert_loaded = self._render(
            'INSERT INTO {t} (key, value) SELECT key, value::jsonb FROM turnout_load ORDER BY key COLLATE "C" '
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value")
        self.delete = self._render("DELETE FROM {t} WHERE key = %s")
        self.delete_many = self._render("DELETE FROM {t} WHERE key = ANY(%s::text[]) RETURNING key")
        # One page of keys (and values): from the prefix or after the last key seen, below the bound.
        self._pages = {(values, after, bounded): self._render(_page(values, after, bounded))
                       for values in (False, True) for after in (False, True) for bounded in (False, True)}

    def _render(self, text: str) -> bytes:
        return sql.SQL(text).format(t=self.name).as_bytes(None)

    def page(self, values: bool, after: bool, bounded: bool) -> bytes:
        return self._pages[(values, after, bounded)]


def _page(values: bool, after: bool, bounded: bool) -> str:
    columns = "key, value::text" if values else "key"
    start = 'key > %s COLLATE "C"' if after else 'key >= %s COLLATE "C"'
    end = ' AND key < %s COLLATE "C"' if bounded else ""
    return f'SELECT {columns} FROM {{t}} WHERE {start}{end} ORDER BY key COLLATE "C" LIMIT %s'


async def ensure_table(connection: psycopg.AsyncConnection[TupleRow], statements: Statements) -> None:
    """Create the table unless it exists; a creator racing this one (another worker, another proxy) is fine."""
    name = statements.name.as_string(connection)
    row = await (await connection.execute("SELECT to_regclass(%s)", (name,))).fetchone()
    if row is not None and row[0] is not None:
        return  # looked up first, so a role that may use the table but not create one still works
    # A concurrent opener may create it between our look and our CREATE: it exists then, as wanted.
    with contextlib.suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
        await connection.execute(statements.create)
