"""The order of writes to one key of an upstream KeyValue store: the order they were issued in.

Calls on one gRPC channel travel as concurrent HTTP/2 streams, and a server may run them in any
order, so two writes to a key sent back to back could land swapped. A write therefore waits for the
one issued before it on the same key to finish. Its place in the line is taken at once, before the
first `await`, so the line is the order in which the calls were made, not the order they happen to
reach a lock in; a batch takes the places of all its keys at once in the same way.

A key is in the table only while a write of it is under way, so a store that has seen millions of
keys keeps nothing for any of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Place:
    """One write's place in the line of its key."""

    key: str
    #: Completed when the write of the key issued just before this one is done; None when there was none.
    before: asyncio.Future[None] | None
    #: Completed when this write is done (and every one before it).
    done: asyncio.Future[None]


class WriteOrder:
    """The line of writes of each key: each write runs once every write of that key issued before it is done."""

    def __init__(self) -> None:
        # key -> the `done` of the last write issued on it.
        self._last: dict[str, asyncio.Future[None]] = {}

    def take_places(self, keys: Iterable[str]) -> list[Place]:
        """Join the line of every key, now (no await): one place per distinct key, in the order given.
        Every place taken must be given back with release(), whether its write ran or not."""
        loop = asyncio.get_running_loop()
        places = []
        for key in dict.fromkeys(keys):
            place = Place(key, self._last.get(key), loop.create_future())
            self._last[key] = place.done
            places.append(place)
        return places

    async def wait_turn(self, place: Place) -> None:
        """Return once the write before this place is done."""
        if place.before is not None:
            # shield: giving up the wait must not cancel the previous write's own future.
            await asyncio.shield(place.before)

    def release(self, place: Place) -> None:
        """This place's write is over (done, failed or never run): the next write may go once the one before has."""
        before = place.before
        if before is not None and not before.done():
            # Given up (cancelled) while the write before still runs: the next write must still wait
            # for that one, so this place ends only when it does.
            before.add_done_callback(lambda _: self.release(Place(place.key, None, place.done)))
            return
        if not place.done.done():
            place.done.set_result(None)
        if self._last.get(place.key) is place.done:
            del self._last[place.key]

    @asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        """Hold the key's turn: entered once the writes of key issued before are done."""
        (place,) = self.take_places((key,))
        try:
            await self.wait_turn(place)
            yield
        finally:
            self.release(place)
