"""Group commit for single writes, and batched point reads: what queues while earlier calls run goes together.

A commit waits for the server to flush its log; a pool of eight connections would otherwise carry
eight commits at a time however many callers wait. Here the first writes go at once, one batch
each, up to a few batches in flight; the writes that queue meanwhile go as one batch (one statement
or one transaction, one commit) as soon as one of those returns. Under light load a batch is one
write, so a write costs what a lone statement does; under heavy load a commit carries hundreds.

The keys of one batch, and of the batches in flight, are distinct: a write is queued only once the
write before it on its key has ended (postgresorder), so a batch never holds two writes of one key.

Gets batch the same way: the gets queued while a batch of them runs go as one `key = ANY(...)`
query, so a burst of reads costs a few round trips, not one each through a pool of eight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar


@dataclass(slots=True)
class QueuedWrite:
    """One set (document given) or delete (None); done answers True when a deleted key existed."""

    key: str
    document: str | None
    done: asyncio.Future[bool]


@dataclass(slots=True)
class QueuedRead:
    """One get; done answers the document's text, or None when the key is absent."""

    key: str
    done: asyncio.Future[str | None]


class Answerable(Protocol):
    @property
    def done(self) -> asyncio.Future[Any]: ...


Q = TypeVar("Q", bound=Answerable)


class Batches(Generic[Q]):
    """Queues calls and hands them to `run` in batches, at most `in_flight` batches at a time.

    `run` answers every call of its batch (a result or an exception on each future, skipping any
    future already done: its caller gave up); a batch that raises instead has the exception set on
    every call it left unanswered.
    """

    def __init__(self, run: Callable[[list[Q]], Awaitable[None]], in_flight: int, max_batch: int) -> None:
        self._run = run
        self._limit = in_flight
        self._max_batch = max_batch
        self._queue: list[Q] = []
        self._running: set[asyncio.Task[None]] = set()
        self._idle: asyncio.Event | None = None

    def submit(self, call: Q) -> None:
        self._queue.append(call)
        if len(self._running) < self._limit:
            self._dispatch()

    def _dispatch(self) -> None:
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        task = asyncio.ensure_future(self._answer(batch))
        self._running.add(task)
        task.add_done_callback(self._ended)

    async def _answer(self, batch: list[Q]) -> None:
        try:
            await self._run(batch)
        except BaseException as exc:  # every caller hears of it, cancellation included
            for call in batch:
                if not call.done.done():
                    call.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._queue:
            self._dispatch()
        elif not self._running and self._idle is not None:
            self._idle.set()

    async def drain(self) -> None:
        """Return once every call submitted so far has been answered."""
        while self._queue or self._running:
            self._idle = asyncio.Event()
            await self._idle.wait()
