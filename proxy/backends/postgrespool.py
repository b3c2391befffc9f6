"""The server under a postgres store: its connection pool, opened without waiting, and every call to
it bounded in time with the driver's errors translated at this one boundary.

Opening never waits for the server: the pool connects in the background, and a server that is down
makes calls fail with BackendUnavailable until it returns, when the pool reconnects by itself. A call
runs as a task (or a future a batch answers) that the caller waits for at most its limit; one that
overruns is abandoned, ending in the background, so a hung server cannot hold a caller past its bound.
Every message passes through proxy.secrets.mask with the dsn's password.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self, TypeVar

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from proxy.errors import BackendUnavailable, InvalidArgument
from proxy.secrets import mask

if TYPE_CHECKING:
    from proxy.config import BackendSpec

T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]
Pool = AsyncConnectionPool[Connection]

#: How long the pool keeps retrying a connection before giving up (a call then asks for a fresh
#: attempt): short, so that after a long outage reconnecting never waits out a long backoff.
MIN_RECONNECT_S = 10.0

#: What the server refuses of a value or key as malformed: its statement failed, so nothing was written.
REFUSED_INPUT = (psycopg.errors.UntranslatableCharacter, psycopg.errors.CharacterNotInRepertoire,
                 psycopg.errors.InvalidTextRepresentation, psycopg.errors.NumericValueOutOfRange,
                 psycopg.errors.InvalidParameterValue, psycopg.errors.ProgramLimitExceeded)


class LastFailure:
    """Why the pool's last connection attempt failed, so a call that found no connection can say why."""

    reason: str | None = None


def _connection_class(last: LastFailure) -> type[Connection]:
    class RecordingConnection(psycopg.AsyncConnection[TupleRow]):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Self:
            try:
                connection = await super().connect(*args, **kwargs)
            except psycopg.Error as exc:
                last.reason = " ".join(str(exc).split())  # libpq's message spans lines
                raise
            last.reason = None
            return connection

    return RecordingConnection


class Server:
    """The pool of one store and the bounds of its calls; `where` names it (no password) in messages."""

    def __init__(self, pool: Pool, where: str, secret: str, last: LastFailure) -> None:
        self.pool = pool
        self.where = where
        self._secret = secret
        self._last = last
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._closed = False

    @classmethod
    async def open(cls, spec: BackendSpec) -> Server:
        """The pool of a spec, at once: it connects in the background, never holding start-up."""
        options = spec.options
        dsn, table = str(options["dsn"]), str(options["table"])
        call_timeout, connect_timeout = float(options["call_timeout"]), float(options["connect_timeout"])
        try:
            params = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise BackendUnavailable(mask(f"postgres: dsn cannot be read: {exc}", dsn)) from exc
        secret = str(params.get("password") or "")
        where = mask(f"postgres {params.get('host', 'localhost')}:{params.get('port', 5432)}/"
                     f"{params.get('dbname', params.get('user', ''))} table {table}", secret)
        statement_ms = int(call_timeout * 1000) + 1000

        async def configure(connection: Connection) -> None:
            # The server stops a statement soon after its caller stopped waiting for it; UTF8 so any
            # key the proxy accepts reaches the server intact (a LATIN1 database refuses what it cannot hold).
            await connection.execute(f"SET statement_timeout = {statement_ms}")
            await connection.execute("SET client_encoding = 'UTF8'")

        last = LastFailure()
        pool: Pool = AsyncConnectionPool(
            dsn, connection_class=_connection_class(last), open=False, min_size=1,
            max_size=int(options["pool_size"]), timeout=call_timeout, configure=configure,
            reconnect_timeout=max(MIN_RECONNECT_S, 2 * connect_timeout), name=where,
            kwargs={"autocommit": True, "connect_timeout": max(2, round(connect_timeout))})
        await pool.open(wait=False)
        return cls(pool, where, secret, last)

    @property
    def reachable(self) -> bool:
        """False while the last connection attempt failed: a late call then most likely found none."""
        return self._last.reason is None

    async def bounded(self, task: asyncio.Future[T], limit: float, connected: Callable[[], bool]) -> T:
        """The task's result within limit seconds; past it the task is abandoned (never waited for)."""
        try:
            done, _ = await asyncio.wait((task,), timeout=limit)
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        if not done:
            self._abandon(task)
            raise BackendUnavailable(self.late(limit, connected()))
        try:
            return task.result()
        except Exception as exc:
            translated = self.translated(exc, limit)
            if translated is exc:
                raise
            raise translated from exc

    def late(self, limit: float, connected: bool) -> str:
        """Why a call ran past its limit: no connection (and why), or no answer from the server."""
        if not connected:
            why = f": {self._last.reason}" if self._last.reason else ""
            return self._masked(f"{self.where}: no connection to the server within {limit:g}s{why}")
        return f"{self.where}: no answer within {limit:g}s (call_timeout)"

    def translated(self, exc: Exception, limit: float) -> Exception:
        """The error a caller sees for a driver's: BackendUnavailable, or InvalidArgument for what the
        server refused as malformed (its statement failed, so nothing was written); no password in it."""
        if isinstance(exc, BackendUnavailable | InvalidArgument):
            return exc
        if isinstance(exc, PoolTimeout):
            return BackendUnavailable(self.late(limit, False))
        if isinstance(exc, REFUSED_INPUT):
            return InvalidArgument(self._masked(f"{self.where}: refused: {_first_line(exc)}"))
        if isinstance(exc, UnicodeEncodeError):
            return InvalidArgument(f"{self.where}: a key or value is not valid UTF-8: {exc.reason}")
        if isinstance(exc, psycopg.OperationalError):
            self._check_idle_connections()
        if isinstance(exc, psycopg.Error):
            return BackendUnavailable(self._masked(f"{self.where}: {_first_line(exc)}"))
        return exc

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        """Stop waiting for a call: it is cancelled and ends in the background, its outcome dropped."""
        task.cancel()
        self._keep(task)

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: nobody waits for an abandoned call's outcome

    def _check_idle_connections(self) -> None:
        """A connection broke (a restarted server ends them all): test the idle ones now, so the next
        calls get live connections instead of failing once per dead one."""
        if not self._closed:
            self._keep(asyncio.ensure_future(self.pool.check()))

    def _masked(self, text: str) -> str:
        return mask(text, self._secret)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._abandoned):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._abandoned, return_exceptions=True)
        await self.pool.close()


def own_copy(error: Exception) -> Exception:
    """An exception of its own for each caller of a batch: one instance raised in many tasks would
    gather every task's traceback."""
    if isinstance(error, BackendUnavailable | InvalidArgument):
        copy = type(error)(*error.args)
        copy.__cause__ = error.__cause__
        return copy
    return error


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
