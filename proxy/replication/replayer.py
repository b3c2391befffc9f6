"""The replayer: carries out pending intents in batches, a bounded number at once, backing off while a
backend fails, and copies one key's state from one store to another.

A copy takes the source's *current* state of the key, its value or its absence, so carrying out an
intent twice, or two intents of one key in either order, leaves the target as the source is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from proxy.backends.base import Backend

#: How many keys the replayer copies at once.
REPLAY_CONCURRENCY = 32
#: Retry delays while a backend fails: first, factor, ceiling (seconds).
BACKOFF_FIRST_S = 0.05
BACKOFF_FACTOR = 2.0
BACKOFF_MAX_S = 5.0


async def replay_forever(wakeup: asyncio.Event, pending: Collection[str],
                         replay_one: Callable[[str, asyncio.Semaphore], Awaitable[bool]]) -> None:
    """Each time `wakeup` is set, carry out a batch of the `pending` keys with `replay_one` (False: that
    key failed and stays pending), until none is left; wait longer after each batch that failed."""
    delay = BACKOFF_FIRST_S
    while True:
        await wakeup.wait()
        wakeup.clear()
        batch = list(pending)[: REPLAY_CONCURRENCY * 8]
        if not batch:
            continue
        slots = asyncio.Semaphore(REPLAY_CONCURRENCY)
        results = await asyncio.gather(*(replay_one(key, slots) for key in batch))
        if all(results):
            delay = BACKOFF_FIRST_S
        else:
            await asyncio.sleep(delay)
            delay = min(delay * BACKOFF_FACTOR, BACKOFF_MAX_S)
        if pending:
            wakeup.set()


async def copy_key(key: str, source: Backend, target: Backend) -> None:
    """Make target hold source's current state of key: its value, or its absence."""
    await put_state(key, await source.get(key), target)


async def put_state(key: str, value: bytes | None, target: Backend) -> None:
    """Make target hold value for key, or not hold key when value is None."""
    if value is None:
        await target.delete(key)
    else:
        await target.set(key, value)
