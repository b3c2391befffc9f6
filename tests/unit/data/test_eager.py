"""start_eagerly: a coroutine runs at once, and only one that waits becomes a Task."""

from __future__ import annotations

import asyncio

import pytest

from proxy.data.eager import start_eagerly


async def test_a_coroutine_that_never_waits_is_done_before_start_returns() -> None:
    """No Task and no turn of the loop: the result is there at once."""
    steps: list[str] = []

    async def answer() -> int:
        steps.append("ran")
        return 42

    future = start_eagerly(answer())
    assert steps == ["ran"]
    assert future.done()
    assert not isinstance(future, asyncio.Task)
    assert future.result() == 42


async def test_an_error_before_any_wait_is_the_futures_exception() -> None:
    """A failing first step does not raise into the caller; the future carries it."""

    async def fail() -> None:
        raise ValueError("broken")

    future = start_eagerly(fail())
    assert future.done()
    with pytest.raises(ValueError, match="broken"):
        future.result()


async def test_a_coroutine_that_waits_continues_in_a_task_from_where_it_stopped() -> None:
    """Values sent at each wait reach the coroutine, and its first step is not run twice."""
    steps: list[str] = []
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def work() -> str:
        steps.append("first")
        got = await gate
        steps.append("second")
        await asyncio.sleep(0)
        return got + "!"

    future = start_eagerly(work(), name="eager-test")
    assert steps == ["first"]
    assert isinstance(future, asyncio.Task)
    assert future.get_name() == "eager-test"
    gate.set_result("opened")
    assert await future == "opened!"
    assert steps == ["first", "second"]


async def test_an_error_after_a_wait_reaches_the_awaiter() -> None:
    """An exception raised after the coroutine suspended is the Task's exception."""

    async def fail_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("late")

    future = start_eagerly(fail_later())
    with pytest.raises(KeyError, match="late"):
        await future


async def test_cancelling_the_task_cancels_the_coroutine_inside_it() -> None:
    """The CancelledError is thrown into the coroutine at its wait, so its cleanup runs."""
    cleaned: list[bool] = []
    started = asyncio.Event()

    async def wait_forever() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)

    future = start_eagerly(wait_forever())
    await started.wait()
    future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await future
    assert cleaned == [True]


async def test_a_coroutine_may_catch_an_exception_thrown_at_its_wait_and_go_on() -> None:
    """A cancellation the coroutine handles leaves it free to return a value."""
    started = asyncio.Event()

    async def stubborn() -> str:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            return "handled"
        return "not reached"

    future = start_eagerly(stubborn())
    await started.wait()
    future.cancel()
    assert await future == "handled"
