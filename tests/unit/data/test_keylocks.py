"""KeyLocks: one holder per key, waiters served in arrival order, nothing kept for free keys."""

from __future__ import annotations

import asyncio

import pytest

from proxy.data.keylocks import KeyLocks


async def test_a_free_key_is_taken_at_once_and_forgotten_when_released() -> None:
    """No wait for a free key, other keys are independent, and a released key leaves the table."""
    locks = KeyLocks()
    release_a = await locks.acquire("a")
    release_b = await asyncio.wait_for(locks.acquire("b"), 1)
    assert len(locks) == 2
    release_a()
    release_b()
    assert len(locks) == 0


async def test_take_free_takes_only_a_free_key_and_a_waiter_gets_it_after() -> None:
    """take_free takes a free key without waiting; a held key gives False, and acquire waits its turn."""
    locks = KeyLocks()
    assert locks.take_free("a")
    assert not locks.take_free("a")
    waiter = asyncio.ensure_future(locks.acquire("a"))
    await asyncio.sleep(0)
    assert not waiter.done()
    locks.release("a")
    release_waiter = await asyncio.wait_for(waiter, 1)
    assert not locks.take_free("a")
    release_waiter()
    assert len(locks) == 0


async def test_holders_of_one_key_never_overlap_and_are_served_in_arrival_order() -> None:
    """Ten writers of one key, each yielding while it holds the key: one at a time, first come first served."""
    locks = KeyLocks()
    inside: list[int] = []
    order: list[int] = []

    async def writer(n: int) -> None:
        async with locks.hold("k"):
            inside.append(n)
            assert len(inside) == 1
            order.append(n)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            inside.remove(n)

    await asyncio.gather(*(writer(n) for n in range(10)))
    assert order == list(range(10))
    assert len(locks) == 0


async def test_a_waiter_cancelled_while_waiting_is_skipped() -> None:
    """A cancelled waiter never gets the key; the next waiter does."""
    locks = KeyLocks()
    release = await locks.acquire("k")
    cancelled = asyncio.create_task(locks.acquire("k"))
    after = asyncio.create_task(locks.acquire("k"))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    release()
    release_after = await asyncio.wait_for(after, 1)
    release_after()
    assert len(locks) == 0


async def test_a_waiter_cancelled_just_as_it_was_handed_the_key_passes_it_on() -> None:
    """Handed the key and cancelled before it ran, a waiter gives the key to the next one, so none is stuck."""
    locks = KeyLocks()
    release = await locks.acquire("k")
    unlucky = asyncio.create_task(locks.acquire("k"))
    next_in_line = asyncio.create_task(locks.acquire("k"))
    await asyncio.sleep(0)
    release()  # hands the key to `unlucky`, which has not run yet
    unlucky.cancel()
    with pytest.raises(asyncio.CancelledError):
        await unlucky
    release_next = await asyncio.wait_for(next_in_line, 1)
    release_next()
    assert len(locks) == 0


async def test_a_waiter_cancelled_and_released_past_before_it_runs_still_ends_cancelled() -> None:
    """A release that skips a waiter just cancelled leaves that waiter a plain CancelledError, the key free."""
    locks = KeyLocks()
    release = await locks.acquire("k")
    waiter = asyncio.create_task(locks.acquire("k"))
    await asyncio.sleep(0)
    waiter.cancel()
    release()  # runs before the waiter does, and drops its cancelled turn
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(locks) == 0
    (await asyncio.wait_for(locks.acquire("k"), 1))()
