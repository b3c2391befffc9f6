"""The postgres store's rates, each beside a raw psycopg client running the same statements in the same run.

    .venv/bin/python bench/postgres_store.py [--seconds 2] [--rows 100000] [--rounds 3] [--dsn DSN] [--json OUT]

Without --dsn a PostgreSQL server is initdb'd into a temporary folder for the run (as the tests do)
and stopped at the end. Point operations: gets/s and sets/s with 16 and with 256 concurrent callers
through the backend against the same statements on a bare psycopg pool of the same size, one
statement per call (the backend batches the gets and group-commits the sets queued meanwhile, and
pays for its bounded calls, write order and error translation). Bulk: set_many of --rows rows through the
backend (an unnest upsert per page, one transaction) against three raw loads of the same rows:
one unnest upsert of every row at once, COPY into a temporary table then one upsert from it, and a
plain COPY into the empty table (the floor: no upsert at all). Every case runs --rounds times,
interleaved with the others, and keeps its best round: other work on a shared machine only ever
takes from a case.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from bench.concurrency import run_concurrently
from bench.report import Figure, print_table, save, with_ratio
from proxy.backends.postgres import PostgresBackend
from proxy.backends.postgresschema import Statements
from tests.support.servers.postgres import PostgresServer

WORKERS = 16
#: A burst: far more callers than connections, where batching gets and group-committing sets pays most.
BURST = 256
KEYS = 10_000
DOC = '{"name": "someone", "visits": 12, "tags": ["a", "b"]}'
Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]


def key(i: int) -> str:
    return f"user:{i % KEYS:05}"


async def raw_pool(dsn: str, size: int) -> Pool:
    pool: Pool = AsyncConnectionPool(dsn, min_size=size, max_size=size, open=False, kwargs={"autocommit": True})
    await pool.open(wait=True)
    return pool


async def point_figures(dsn: str, spec: Any, statements: Statements, seconds: float, rounds: int) -> list[Figure]:
    backend = await PostgresBackend.open(spec)
    await backend.set_many([(key(i), DOC.encode()) for i in range(KEYS)])
    pool = await raw_pool(dsn, int(spec.options["pool_size"]))

    async def raw_get(i: int) -> None:
        async with pool.connection() as connection:
            row = await (await connection.execute(statements.get, (key(i),))).fetchone()
            assert row is not None

    async def raw_set(i: int) -> None:
        async with pool.connection() as connection:
            await connection.execute(statements.upsert, (key(i), DOC))

    async def store_get(i: int) -> None:
        assert await backend.get(key(i)) is not None

    async def store_set(i: int) -> None:
        await backend.set(key(i), DOC.encode())

    ops = {"raw get": raw_get, "store get": store_get, "raw set": raw_set, "store set": store_set}
    cases = [(name, workers) for workers in (WORKERS, BURST) for name in ops]
    best = dict.fromkeys(cases, 0.0)
    for _ in range(rounds):
        for name, workers in cases:
            timed = await run_concurrently(ops[name], workers, seconds)
            best[(name, workers)] = max(best[(name, workers)], timed.rate)
    figures = []
    for workers in (WORKERS, BURST):
        for name in ("get", "set"):
            baseline = Figure(f"raw psycopg {name}, {workers} concurrent", best[(f"raw {name}", workers)], f"{name}s/s")
            measured = Figure(f"store {name}, {workers} concurrent", best[(f"store {name}", workers)], f"{name}s/s")
            figures += [baseline, with_ratio(measured, baseline)]
    await pool.close()
    await backend.close()
    return figures


async def bulk_figures(server_spec: Callable[[str], Any], dsn: str, rows: int, rounds: int) -> list[Figure]:
    items = [(f"bulk:{i:07}", f'{{"i": {i}, "name": "someone"}}') for i in range(rows)]
    keys, values = [k for k, _ in items], [v for _, v in items]
    pool = await raw_pool(dsn, 1)

    async def fresh() -> Statements:
        statements = Statements(f"bench_{uuid.uuid4().hex[:12]}")
        async with pool.connection() as connection:
            await connection.execute(statements.create)
        return statements

    async def raw_unnest(table: Statements) -> None:
        async with pool.connection() as connection, connection.transaction():
            await connection.execute(table.upsert_many, (keys, values))

    async def raw_copy_upsert(table: Statements) -> None:
        async with pool.connection() as connection, connection.transaction():
            await connection.execute("CREATE TEMP TABLE load (key text, value text) ON COMMIT DROP")
            async with connection.cursor().copy("COPY load (key, value) FROM STDIN") as copy:
                for row in items:
                    await copy.write_row(row)
            await connection.execute(sql.SQL(
                "INSERT INTO {t} (key, value) SELECT key, value::jsonb FROM load ORDER BY key COLLATE \"C\" "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value").format(t=table.name))

    async def raw_copy(table: Statements) -> None:
        async with pool.connection() as connection, connection.transaction():
            statement = sql.SQL("COPY {t} (key, value) FROM STDIN").format(t=table.name)
            async with connection.cursor().copy(statement) as copy:
                for row in items:
                    await copy.write_row(row)

    encoded = [(k, v.encode()) for k, v in items]

    stores: dict[str, PostgresBackend] = {}

    async def store_load(table: Statements) -> None:
        await stores[table.table].set_many(encoded)

    cases: dict[str, Callable[[Statements], Awaitable[None]]] = {
        f"raw unnest upsert, {rows} rows in one statement": raw_unnest,
        f"raw COPY to a temp table + one upsert, {rows} rows": raw_copy_upsert,
        f"raw COPY into the empty table, {rows} rows (floor)": raw_copy,
        f"store set_many, {rows} rows (COPY + one upsert, one transaction)": store_load,
    }
    best = dict.fromkeys(cases, 0.0)
    for _ in range(rounds):
        for case, load in cases.items():
            table = await fresh()  # every load starts on an empty table of its own
            if load is store_load:  # connected before the clock starts, as the raw pool is
                stores[table.table] = await PostgresBackend.open(server_spec(table.table))
                await stores[table.table].probe()
            started = time.monotonic()
            await load(table)
            best[case] = max(best[case], rows / (time.monotonic() - started))
    for backend in stores.values():
        await backend.close()
    await pool.close()
    figures = [Figure(case, rate, "rows/s") for case, rate in best.items()]
    return [*figures[:3], with_ratio(figures[3], figures[0]), with_ratio(figures[3], figures[1])]


async def run(args: argparse.Namespace, server: PostgresServer | None) -> list[Figure]:
    dsn = args.dsn or (server.dsn if server else "")
    table = f"bench_{uuid.uuid4().hex[:12]}"

    def spec(name: str) -> Any:
        from proxy.backends.options import read_options
        from proxy.backends.registry import STORE_TYPES
        from proxy.config import BackendSpec

        raw = {"dsn": dsn, "table": name, "call_timeout": 60.0}
        return BackendSpec(type="postgres", options=read_options(STORE_TYPES["postgres"].options, raw, Path(".")))

    figures = await point_figures(dsn, spec(table), Statements(table), args.seconds, args.rounds)
    return figures + await bulk_figures(spec, dsn, args.rows, args.rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per point case")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the bulk load")
    parser.add_argument("--dsn", help="an existing server to measure against (default: start one for the run)")
    parser.add_argument("--rounds", type=int, default=3, help="measure every case this many times, keep the best")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    if args.dsn:
        figures = asyncio.run(run(args, None))
    else:
        with tempfile.TemporaryDirectory(prefix="turnout-pg-bench-") as folder:
            server = PostgresServer(Path(folder))
            server.create()
            try:
                figures = asyncio.run(run(args, server))
            finally:
                server.stop()
    print_table("postgres store and raw psycopg, pool_size 8 each", figures)
    save(args.json, "postgres_store", figures)


if __name__ == "__main__":
    main()
