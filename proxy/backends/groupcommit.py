"""Group commit: concurrent writers share one durable flush instead of paying one each.

Writes queue into the open batch; a single flusher takes the whole batch, hands it to the store's
flush function (run off the event loop) and answers every writer of the batch at once. Writes that
arrive while a flush runs form the next batch. With `enabled=False` every submit flushes alone,
one after another: the baseline that benchmarks compare against.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from proxy.errors import BackendUnavailable

Op = TypeVar("Op")


class _Batch(Generic[Op]):
    __slots__ = ("done", "ops")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.done: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()


class GroupCommit(Generic[Op]):
    def __init__(self, flush: Callable[[list[Op]], Awaitable[list[bool]]], name: str, enabled: bool = True) -> None:
        """flush applies ops durably and returns one bool per op; it is never called concurrently."""
        self._flush = flush
        self._name = name
        self._enabled = enabled
        self._batch: _Batch[Op] | None = None
        self._flusher: asyncio.Task[None] | None = None
        #: Held by every flush: a store takes it too for other work that must not overlap a flush.
        self.lock = asyncio.Lock()
        self.flushes = 0

    async def submit(self, ops: list[Op]) -> list[bool]:
        """Queue ops; returns, once they are durable, the flush function's answer for each."""
        if not self._enabled:
            async with self.lock:
                return await self._run(ops)
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush_batches(), name=f"group-commit {self._name}")
        start = len(batch.ops)
        batch.ops.extend(ops)
        # shield: a caller that gives up (its deadline passed) must not cancel a flush others share.
        results = await asyncio.shield(batch.done)
        return results[start : start + len(ops)]

    async def _run(self, ops: list[Op]) -> list[bool]:
        try:
            results = await self._flush(ops)
        except BackendUnavailable:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"{self._name}: write failed: {exc}") from exc
        self.flushes += 1
        return results

    async def _flush_batches(self) -> None:
        while self._batch is not None:
            batch, self._batch = self._batch, None
            try:
                async with self.lock:
                    batch.done.set_result(await self._run(batch.ops))
            except BackendUnavailable as exc:
                batch.done.set_exception(exc)
                # Every writer of the batch may have given up; mark the error as seen so asyncio
                # does not report it as lost. The writers still waiting receive it.
                batch.done.exception()

    async def wait_idle(self) -> None:
        """Return once every queued write has been flushed (or has failed)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
