"""The SQLite file under a store: its schema and pragmas, its connections, and sqlite3's errors
translated at the boundary. WAL with synchronous=FULL, so a committed write survives a crash.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from proxy.errors import BackendUnavailable

SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"
BUSY_TIMEOUT_MS = 5000


@contextlib.contextmanager
def translated_errors(path: Path) -> Iterator[None]:
    """sqlite3's errors become BackendUnavailable at the boundary, naming the file.

    UnicodeEncodeError too: a key holding a lone surrogate (a legacy JSON file may spell one as
    `\\ud800`) cannot be bound as SQLite TEXT, so this store can neither hold nor find it.
    """
    try:
        yield
    except sqlite3.Error as exc:
        raise BackendUnavailable(f"sqlite {path}: {exc}") from exc
    except UnicodeEncodeError as exc:
        raise BackendUnavailable(f"sqlite {path}: key is not valid UTF-8: {exc}") from exc


def blob(value: object) -> bytes:
    """A stored value as bytes: turnout writes BLOBs, but another writer may have stored TEXT."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string greater than every string starting with prefix (None: no bound is needed).

    SQLite compares TEXT as UTF-8 bytes, which orders like code points, as Python does. None comes
    back only for "" and for a prefix made of U+10FFFF alone, which every string at or above it
    starts with.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            successor = last + 1
            if 0xD800 <= successor <= 0xDFFF:
                successor = 0xE000  # surrogates cannot be stored; skip over them
            return "".join(chars) + chr(successor)
    return None


def prepare_file(path: Path) -> None:
    """Make path a SQLite store in WAL mode with its table, before several processes open it at once:
    switching to WAL needs the file alone, and a process that finds it busy then fails at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prepared(path).close()


def prepared(path: Path) -> sqlite3.Connection:
    with translated_errors(path):
        connection = connect(path)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute(SCHEMA)
        except BaseException:
            connection.close()
            raise
        return connection


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return connection
