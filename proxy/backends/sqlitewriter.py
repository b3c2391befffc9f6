"""Group commit for a SQLite store: one writer thread takes every queued write, applies them in one
transaction and answers each caller after the COMMIT, so sixteen concurrent writers cost one fsync.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from proxy.backends.base import Item, Key, Value
from proxy.errors import BackendUnavailable

#: At most this many queued writes share one transaction (bounds its size and latency).
MAX_BATCH = 2048
_STOP = object()


@dataclass(slots=True)
class _Write:
    """One queued write: set (value is bytes), delete (value None), or many sets (items)."""

    key: Key | None
    value: Value | None
    items: Sequence[Item] | None
    done: Future[bool]

    def unstorable_key(self) -> Key | None:
        """A key of this write that SQLite cannot bind, found before the batch's transaction starts.

        Checked up front so that one such write fails alone instead of failing (or, for set_many,
        half-applying) the whole batch it was grouped with.
        """
        keys = [key for key, _ in self.items] if self.items is not None else [self.key or ""]
        for key in keys:
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                return key
        return None

    def settle(self, result: bool | BaseException) -> None:
        if self.done.cancelled():
            return
        if isinstance(result, BaseException):
            self.done.set_exception(result)
        else:
            self.done.set_result(result)


class GroupCommitWriter:
    """The one writer of a store's file: `submit` queues a write, `stop` commits what is queued and ends."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._writer = connection
        self._writes: queue.SimpleQueue[_Write | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="sqlite-write", daemon=True)
        #: Transactions committed so far: lets tests and benchmarks see group commit at work.
        self.commits = 0
        self._thread.start()

    def submit(self, key: Key | None, value: Value | None, items: Sequence[Item] | None) -> Future[bool]:
        """Queue a set (value), a delete (no value) or many sets (items); the future answers after COMMIT."""
        done: Future[bool] = Future()
        self._writes.put(_Write(key, value, items, done))
        return done

    def stop(self) -> None:
        """Blocks: the writes queued so far commit, then the thread ends and the connection closes."""
        self._writes.put(_STOP)
        self._thread.join()
        self._writer.close()

    def _write_loop(self) -> None:
        while True:
            first = self._writes.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._writes.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._writes.put(_STOP)  # finish this batch, then stop
                    break
                batch.append(more)
            self._commit([w for w in batch if isinstance(w, _Write)])

    def _commit(self, writes: list[_Write]) -> None:
        """Apply a batch in one transaction and answer each write after the COMMIT.

        Catches every Exception, not only sqlite3's: an error escaping here would end the writer
        thread and leave every later write waiting forever.
        """
        batch: list[_Write] = []
        for write in writes:
            if (key := write.unstorable_key()) is not None:
                write.settle(BackendUnavailable(f"sqlite {self.path}: key {key!r} is not valid UTF-8"))
            else:
                batch.append(write)
        if not batch:
            return
        results: list[bool] = []
        try:
            cursor = self._writer.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            for write in batch:
                if write.items is not None:
                    cursor.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", write.items)
                    results.append(True)
                elif write.value is not None:
                    cursor.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (write.key, write.value))
                    results.append(True)
                else:
                    # Evaluated in queue order inside the batch, so set-then-delete of one key
                    # answers True even though neither was committed before.
                    cursor.execute("DELETE FROM kv WHERE key = ?", (write.key,))
                    results.append(cursor.rowcount > 0)
            cursor.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            if self._writer.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.execute("ROLLBACK")
            error = BackendUnavailable(f"sqlite {self.path}: write failed: {exc}")
            for write in batch:
                write.settle(error)
            return
        for write, result in zip(batch, results, strict=True):
            write.settle(result)
