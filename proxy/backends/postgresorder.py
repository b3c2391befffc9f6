"""Writes to one key, issued together in one process, take effect in the order they were issued.

A pool runs calls on several connections at once, so two writes to one key issued back to back
could otherwise commit in either order. Each write takes its turn on its keys the moment it is
issued (before its first await) and waits only for the earlier writes sharing a key with it:
writes to other keys run side by side. Nothing about the data is kept here, only the writes in
flight, so several processes may share the table (their writes meet in PostgreSQL's row locks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


class WriteTurn:
    """One write's place in line on its keys: wait() for the writes before it, then finish()."""

    def __init__(self, order: WriteOrder, keys: tuple[str, ...], before: list[asyncio.Future[None]]) -> None:
        self._order = order
        self._keys = keys
        self._before = before
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def wait(self) -> None:
        """Return once every earlier write sharing a key with this one has ended (asyncio.wait never
        cancels what it waits for, so a caller giving up cannot cancel an earlier write's turn)."""
        if self._before:
            await asyncio.wait(self._before)

    def finish(self, write: asyncio.Future[bool] | None = None) -> None:
        """End this write's turn once the write (when given) and the writes ahead of it have ended: a
        caller that gave up early passes the turn on only then, so a later write can never overtake
        one still under way."""
        pending: list[asyncio.Future[Any]] = [f for f in self._before if not f.done()]
        if write is not None and not write.done():
            pending.append(write)
        if pending:
            gathered = asyncio.gather(*pending, return_exceptions=True)
            gathered.add_done_callback(lambda _: self._release())
        else:
            self._release()

    def _release(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        self._order.forget(self._keys, self.done)


class WriteOrder:
    """The last write issued on each key with a write in flight."""

    def __init__(self) -> None:
        self._last: dict[str, asyncio.Future[None]] = {}

    def take(self, keys: Iterable[str]) -> WriteTurn:
        """The turn of a write on keys, placed after every write already issued on any of them."""
        unique = tuple(dict.fromkeys(keys))
        last = self._last
        before: list[asyncio.Future[None]] = []
        # Only the keys with a write in flight matter, found at C speed: a bulk write of thousands of
        # keys would otherwise pay a look-up each in Python.
        for key in last.keys() & unique if last else ():
            earlier = last[key]
            if all(earlier is not f for f in before):
                before.append(earlier)
        turn = WriteTurn(self, unique, before)
        last.update(dict.fromkeys(unique, turn.done))
        return turn

    def forget(self, keys: tuple[str, ...], done: asyncio.Future[None]) -> None:
        for key in keys:
            if self._last.get(key) is done:
                del self._last[key]

    def __len__(self) -> int:
        """Keys with a write in flight (tests check nothing is left behind)."""
        return len(self._last)
