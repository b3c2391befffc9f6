"""Start a coroutine at once, and make a Task of it only if it has to wait.

A shadow call runs beside the primary. On a store that answers without waiting (the memory
backend, a cached read) a Task would cost more than the call itself: it is scheduled, run on a later
turn of the event loop, and its result is picked up on yet another turn. Running the coroutine up to
its first real suspension right away, as Python 3.12's eager task factory does, lets such a call
finish before the primary has even started, so the caller compares, settles and releases the key in
line. A call that does suspend continues in a Task from exactly where it stopped.

A call that never waited needs no loop at all: its outcome is a `Finished`, which answers what a
done Future would (done, cancelled, result, exception). Making a Future would first ask which loop
runs, and on Python 3.11 that question is a getpid() system call, paid on every shadow call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


class Finished(Generic[T]):
    """The outcome of a coroutine that finished without waiting, read as a done Future is read.

    `error` is what it raised (None when it returned), for a caller that only asks whether it failed.
    """

    __slots__ = ("_value", "error")

    def __init__(self, value: T | None = None, error: BaseException | None = None) -> None:
        self._value = value
        self.error = error

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return isinstance(self.error, asyncio.CancelledError)

    def exception(self) -> BaseException | None:
        if isinstance(self.error, asyncio.CancelledError):
            raise self.error  # as a cancelled Future does
        return self.error

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return cast(T, self._value)  # no error: the coroutine returned this value

    def cancel(self) -> bool:
        return False  # done already, as a done Future answers

    def __await__(self) -> Generator[Any, None, T]:
        return self.result()
        yield  # a generator that never waits: awaiting gives the outcome at once


#: The outcome of every call that returned None without waiting (a Set): immutable, so shared.
_NONE: Finished[Any] = Finished()


def start_eagerly(coro: Coroutine[Any, Any, T], name: str | None = None) -> Finished[T] | asyncio.Task[T]:
    """Run coro until it first waits; its outcome when it never waited, else the Task that goes on."""
    try:
        awaited = coro.send(None)
    except StopIteration as stop:
        return _NONE if stop.value is None else Finished(stop.value)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # CancelledError included: the outcome says so, as a Task's would
        return Finished(error=exc)
    return asyncio.get_running_loop().create_task(_Continuation(coro, awaited), name=name)


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
