"""The write path of the redis store: writes to one key land in the order they were issued.

A pool runs concurrent commands on different connections, so two writes to one key issued one after
the other could reach the server in the other order. Each write is therefore queued, before its
caller awaits anything, on one of a few lanes chosen by a hash of its key; a lane sends what has
queued on it as one pipeline, in order, and the next batch only after the last one was answered.
Writes to one key share a lane, so they keep their order; writes to different keys run on
different lanes in parallel; and under load many writes share one round trip (and one fsync
round of the server). A caller that stops waiting (its deadline) leaves its write queued: it is
still sent, in its place, so a later write to the key still lands after it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.backends.rediscluster import Command
from proxy.errors import BackendUnavailable

#: Commands one pipeline carries at most: bounds a batch's size on the wire and the server's pause.
BATCH_COMMANDS = 1000

RunBatch = Callable[[list[Command]], Awaitable[list[Any]]]


@dataclass(slots=True)
class _Queued:
    commands: Sequence[Command]
    done: asyncio.Future[list[Any]]


def lane_of(key: bytes, lanes: int) -> int:
    return zlib.crc32(key) % lanes


def _taken(done: asyncio.Future[list[Any]]) -> None:
    if not done.cancelled():
        done.exception()


class WriteLanes:
    """Lanes of queued writes, each sent in order as pipelines by `run_batch`."""

    def __init__(self, run_batch: RunBatch, lanes: int) -> None:
        self._run_batch = run_batch
        self._queues: list[deque[_Queued]] = [deque() for _ in range(lanes)]
        self._drains: list[asyncio.Task[None] | None] = [None] * lanes

    @property
    def lanes(self) -> int:
        return len(self._queues)

    def submit(self, lane: int, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        """Queue the commands on a lane (synchronously: the order of calls is the order of writes)."""
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        # A caller past its deadline no longer awaits the answer: take it, so none is reported unread.
        done.add_done_callback(_taken)
        self._queues[lane].append(_Queued(commands, done))
        if self._drains[lane] is None:
            self._drains[lane] = asyncio.get_running_loop().create_task(self._drain(lane))
        return done

    async def _drain(self, lane: int) -> None:
        queue = self._queues[lane]
        try:
            while queue:
                batch: list[_Queued] = []
                count = 0
                while queue and (not batch or count + len(queue[0].commands) <= BATCH_COMMANDS):
                    batch.append(queue.popleft())
                    count += len(batch[-1].commands)
                await self._send(batch)
        finally:
            self._drains[lane] = None

    async def _send(self, batch: list[_Queued]) -> None:
        try:
            replies = await self._run_batch([command for queued in batch for command in queued.commands])
        except Exception as exc:  # every caller of the batch must hear, or it would wait forever
            failure = exc if isinstance(exc, BackendUnavailable) else BackendUnavailable(f"redis write failed: {exc!r}")
            for queued in batch:
                if not queued.done.done():
                    queued.done.set_exception(failure)
            return
        start = 0
        for queued in batch:
            end = start + len(queued.commands)
            if not queued.done.done():
                queued.done.set_result(replies[start:end])
            start = end

    async def drained(self) -> None:
        """Return once every write queued so far has been sent and answered."""
        pending = [task for task in self._drains if task is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
