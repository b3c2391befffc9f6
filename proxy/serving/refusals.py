"""Frees a refused request at once, instead of at the garbage collector's next full pass.

A refusal is `context.abort()`, which raises grpc's AbortError and keeps it on the call's own state.
Its traceback holds the handler's frame, that frame holds the request and the context, and the
context holds the call's state: a reference cycle around the whole request. Only the cyclic collector
frees it, and with its threshold raised and start-up frozen (`proxy.collector`) that came
after thousands of calls, so refused 10 MB requests piled up by the gigabyte (issue 16, item 2).

`released` wraps each handler once, as the server registers it (an interceptor would do the same on
every call, a coroutine and a look-up more per call): when the call was aborted, it drops the tracebacks
of the abort and of the error behind it before grpc sees them, and its own reference to the request,
so nothing in the cycle that is left reaches the request and it is freed when the call ends.

It also keeps the requests that handlers hold at once (a slow store, a busy key lock) within a byte
budget: past it, a call is refused with RESOURCE_EXHAUSTED before any work, so many large writes
waiting on a slow store cannot take the machine's memory. One request is always let in, however
large (the receive limit bounds it), so a budget never starves a lone large write.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc

_Behaviour = Callable[..., Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic in the stubs only


def _forget_frames(error: BaseException) -> None:
    """Drop the tracebacks of error and of every error chained to it (each holds handler frames)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


MIB = 1024 * 1024
#: Requests that handlers may hold at once, in receive limits: a few large writes in flight.
IN_FLIGHT_REQUESTS = 4
#: The budget is never below this, so small values never meet it in practice.
MIN_IN_FLIGHT_BYTES = 256 * 1024 * 1024


def in_flight_budget(receive_limit: int) -> int:
    """The bytes of requests handlers may hold at once, for a transport that takes up to receive_limit."""
    return max(IN_FLIGHT_REQUESTS * receive_limit, MIN_IN_FLIGHT_BYTES)


@dataclass(slots=True)
class InFlight:
    """The bytes of the requests handlers hold now, against the budget."""

    budget: int
    held: int = 0

    def refusal(self, size: int) -> str | None:
        """Why a request of size bytes must wait for others to finish, or None to take it (and count it)."""
        if self.held and self.held + size > self.budget:
            return (f"turnout holds {self.held // MIB} MiB of requests in flight (budget {self.budget // MIB} MiB); "
                    "retry later")
        self.held += size
        return None


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], why: str) -> Any:
    try:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
    except grpc.aio.AbortError as aborted:
        _forget_frames(aborted)
        raise


async def _refuse_stream(context: grpc.aio.ServicerContext[Any, Any], why: str) -> AsyncIterator[Any]:
    await _refuse(context, why)
    yield  # never reached: makes this an async generator, as the stream handlers are


def _unary(behaviour: _Behaviour, in_flight: InFlight) -> Callable[..., Awaitable[Any]]:
    # One frame per call, everything in line: this wraps every call the server takes.
    async def release_on_abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        size = len(request) if type(request) is bytes else request.ByteSize()  # KeyValue parses its own
        why = in_flight.refusal(size)
        if why is None:
            work = behaviour(request, context)
        else:
            work, size = _refuse(context, why), 0
        del request  # only the handler's frame holds it now, and an abort's traceback is dropped
        try:
            return await work
        except grpc.aio.AbortError as aborted:
            _forget_frames(aborted)  # so that no frame in the cycle the abort leaves reaches the request
            raise
        finally:
            in_flight.held -= size

    return release_on_abort


def _unary_stream(behaviour: _Behaviour, in_flight: InFlight) -> Callable[..., AsyncIterator[Any]]:
    async def release_on_abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        size = len(request) if type(request) is bytes else request.ByteSize()
        why = in_flight.refusal(size)
        if why is None:
            replies = behaviour(request, context)
        else:
            replies, size = _refuse_stream(context, why), 0
        del request
        try:
            async for reply in replies:
                yield reply
        except grpc.aio.AbortError as aborted:
            _forget_frames(aborted)
            raise
        finally:
            in_flight.held -= size

    return release_on_abort


def _released(handler: Handler, in_flight: InFlight) -> Handler:
    if handler.request_streaming:
        return handler  # a stream's messages are each freed as the handler moves on
    if handler.response_streaming:
        if handler.unary_stream is None or not inspect.isasyncgenfunction(handler.unary_stream):
            return handler
        return grpc.unary_stream_rpc_method_handler(
            _unary_stream(handler.unary_stream, in_flight), handler.request_deserializer,
            handler.response_serializer)
    if handler.unary_unary is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        _unary(handler.unary_unary, in_flight), handler.request_deserializer, handler.response_serializer)


def released(handlers: Mapping[str, Handler], in_flight: InFlight) -> dict[str, Handler]:
    """One service's handlers, each wrapped so that an aborted call frees its request when it ends and
    the requests held at once stay within in_flight's budget: what the server registers."""
    return {method: _released(handler, in_flight) for method, handler in handlers.items()}
