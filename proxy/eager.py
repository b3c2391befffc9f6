"""Start a coroutine at once, and make a Task of it only if it has to wait.

A shadow call runs beside the primary. On a store that answers without waiting (the memory
backend, a cached read) a Task would cost more than the call itself: it is scheduled, run on a later
turn of the event loop, and its result is picked up on yet another turn. Running the coroutine up to
its first real suspension right away, as Python 3.12's eager task factory does, lets such a call
finish before the primary has even started, so the caller compares, settles and releases the key in
line. A call that does suspend continues in a Task from exactly where it stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def start_eagerly(coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Future[T]:
    """Run coro until it first waits; its outcome as a future (already done when it never waited)."""
    loop = asyncio.get_running_loop()
    try:
        awaited = coro.send(None)
    except StopIteration as stop:
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # CancelledError included: the future says so, as a Task's would
        failed: asyncio.Future[T] = loop.create_future()
        if isinstance(exc, asyncio.CancelledError):
            failed.cancel()
        else:
            failed.set_exception(exc)
        return failed
    return loop.create_task(_Continuation(coro, awaited), name=name)


class _Continuation(Coroutine[Any, Any, T]):
    """coro, taken over by a Task after its first step: the Task first waits on what coro waits on.

    A plain `async def` wrapper would not do: a Task cancelled before its first step throws into the
    wrapper before the wrapper has reached coro, and coro would never hear of the cancellation.
    Here every send and throw, the first included, goes to coro itself.
    """

    __slots__ = ("_awaited", "_coro", "_started")

    def __init__(self, coro: Coroutine[Any, Any, T], awaited: Any) -> None:
        self._coro = coro
        self._awaited = awaited
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            awaited, self._awaited = self._awaited, None
            return awaited  # the Task's first step: wait where coro already waits
        return self._coro.send(value)

    def throw(self, *exc: Any) -> Any:
        self._started = True
        self._awaited = None
        return self._coro.throw(*exc)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        raise TypeError("a continuation is driven by its Task, never awaited")
