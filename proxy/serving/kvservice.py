"""The gRPC face of the proxy: turns requests into dispatcher calls, validates input, and maps
errors to status codes in one place. No routing and no storage logic lives here; the server that
carries these handlers is put together in proxy.serving.server.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from opentelemetry import trace
from turnout.kv.v1 import kv_pb2

from proxy.config import MAX_KEY_BYTES
from proxy.data.backendcall import UNNAMED
from proxy.data.dispatcher import Call, Dispatcher
from proxy.errors import BackendUnavailable, InvalidArgument, ReadOnly, TurnoutError
from proxy.jsonvalue import DocumentError, check_document
from proxy.serving.validation import check_key, not_a_document, too_large
from proxy.telemetry.tracing import Telemetry

log = logging.getLogger(__name__)

USER_METADATA = "x-turnout-user"
#: A key of at most this many code points is within MAX_KEY_BYTES whatever it holds (4 UTF-8 bytes
#: at most each): the handlers call check_key only past it, or for an empty key.
KEY_CLEARED = MAX_KEY_BYTES // 4
GetRequest, SetRequest, HasRequest, DeleteRequest = (
    kv_pb2.GetRequest, kv_pb2.SetRequest, kv_pb2.HasRequest, kv_pb2.DeleteRequest)
# The unary handlers parse their requests and encode their answers themselves, from module names: a
# method looked up on a message class costs about 40 ns a call, and a reply built anew for each call
# ~150 ns where every answer but Get's found value is one of a few constant encodings.
parse_get, parse_set, parse_has, parse_delete = (
    GetRequest.FromString, SetRequest.FromString, HasRequest.FromString, DeleteRequest.FromString)
GET_MISSING = kv_pb2.GetResponse(found=False).SerializeToString()
SET_DONE = kv_pb2.SetResponse().SerializeToString()
HAS_FOUND, HAS_MISSING = (kv_pb2.HasResponse(found=True).SerializeToString(),
                          kv_pb2.HasResponse(found=False).SerializeToString())
DELETED, NOT_THERE = (kv_pb2.DeleteResponse(existed=True).SerializeToString(),
                      kv_pb2.DeleteResponse(existed=False).SerializeToString())
GetResponse = kv_pb2.GetResponse
KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KeyValue"].full_name


_STATUS: dict[type[TurnoutError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    ReadOnly: grpc.StatusCode.UNAVAILABLE,
    BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: TurnoutError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        code = _STATUS.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def caller_of(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for name, value in metadata or ():
        if name == USER_METADATA:
            return value if isinstance(value, str) else bytes(value).decode()
    return None


async def failed(call: Call, error: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """A call ended by error: an expected one becomes its status code (abort raises grpc's AbortError)
    and an error on the call's span; any other (a programming error: INTERNAL) still ends the span,
    and the caller re-raises it."""
    span = call.span
    if isinstance(error, TurnoutError):
        code = status_for(error)
        if span is not None:
            span.set_status(trace.StatusCode.ERROR, f"{code.name}: {error}")
            span.end()
        await context.abort(code, str(error))
    if span is not None:
        span.set_status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}")
        span.end()


class Handling:
    """The error-and-span context of a streaming handler: an expected error becomes its status code
    (and an error on the call's span), and the span ends however the call ends. The unary handlers,
    on every call, do the same in line (try, `failed`, end the span): an `async with` costs two
    coroutines a call.
    """

    __slots__ = ("_context", "call")

    def __init__(self, call: Call, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.call = call
        self._context = context

    async def __aenter__(self) -> Call:
        return self.call

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if error is None:
            if self.call.span is not None:
                self.call.span.end()
            return
        await failed(self.call, error, self._context)


#: A protobuf message type of the KeyValue service's requests.
Request = TypeVar("Request", bound=Message)


def parsed(kind: type[Request], raw: bytes) -> Request:
    """The request from its bytes; bytes that are not one (garbage, or a string field that is not
    UTF-8, which protobuf refuses) are the caller's error, not the server's."""
    try:
        return kind.FromString(raw)
    except DecodeError:
        raise not_parsed(kind) from None


def not_parsed(kind: type[Message]) -> InvalidArgument:
    return InvalidArgument(f"request: not a valid {kind.DESCRIPTOR.full_name} (not protobuf, or a string field "
                           "holds invalid UTF-8)")


class KeyValueService:
    """The KeyValue calls. Each takes its request as bytes and parses it inside Handling, so a request
    that does not parse gets INVALID_ARGUMENT (the generated servicer's deserializers would raise
    before any handler runs, which gRPC reports as UNKNOWN)."""

    def __init__(self, dispatcher: Callable[[], Dispatcher | None], max_value_bytes: int,
                 telemetry: Telemetry | None = None) -> None:
        # A callable, so the service can be registered before the backends are open.
        self._dispatcher = dispatcher
        #: The dispatcher once open: it stays for the life of the service, so calls read it here.
        self._open: Dispatcher | None = None
        self._max_value_bytes = max_value_bytes
        self._telemetry = telemetry or Telemetry(enabled=False)

    def _ready(self) -> Dispatcher:
        dispatcher = self._open
        if dispatcher is None:
            dispatcher = self._open = self._dispatcher()
            if dispatcher is None:
                raise BackendUnavailable("turnout is starting: backends not open yet")
        return dispatcher

    def _call(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Call:
        """The call's caller and span. Neither matters in the usual case, tracing off and flags that
        route no caller by name: then the call's metadata is not read at all, as grpc builds it anew
        (a tuple per entry) on each read, about 5 % of a call's instructions."""
        telemetry = self._telemetry
        dispatcher = self._open
        if dispatcher is not None and not telemetry.traces_calls and not dispatcher.routes.router.by_caller:
            return UNNAMED
        metadata = context.invocation_metadata()
        caller = caller_of(metadata) if metadata else None
        span = telemetry.server_span(method, metadata) if telemetry.traces_calls else None
        return UNNAMED if caller is None and span is None else Call(caller, span)

    # The four unary handlers run on every call, so what they share is written out in each (a
    # function call per step costs more than the step): the parse, the key's cheap bound (check_key
    # only for a key that may be too long), the error and the span's end.

    async def Get(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        call = self._call("Get", context)
        span = call.span
        try:
            try:
                key = parse_get(raw).key
            except DecodeError:
                raise not_parsed(GetRequest) from None
            if not key or len(key) > KEY_CLEARED:
                check_key(key)
            value = await (self._open or self._ready()).get(key, call)
        except BaseException as error:
            await failed(call, error, context)
            raise
        if span is not None:
            span.end()
        if value is None:
            return GET_MISSING
        return GetResponse(found=True, value=value).SerializeToString()

    async def Set(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        call = self._call("Set", context)
        span = call.span
        try:
            try:
                request = parse_set(raw)
            except DecodeError:
                raise not_parsed(SetRequest) from None
            key = request.key
            if not key or len(key) > KEY_CLEARED:
                check_key(key)
            value = request.value
            if len(value) > self._max_value_bytes:
                raise too_large(value, self._max_value_bytes)
            try:
                check_document(value)
            except DocumentError as problem:
                raise not_a_document(problem) from None
            await (self._open or self._ready()).set(key, value, call)
        except BaseException as error:
            await failed(call, error, context)
            raise
        if span is not None:
            span.end()
        return SET_DONE

    async def Has(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        call = self._call("Has", context)
        span = call.span
        try:
            try:
                key = parse_has(raw).key
            except DecodeError:
                raise not_parsed(HasRequest) from None
            if not key or len(key) > KEY_CLEARED:
                check_key(key)
            found = await (self._open or self._ready()).has(key, call)
        except BaseException as error:
            await failed(call, error, context)
            raise
        if span is not None:
            span.end()
        return HAS_FOUND if found else HAS_MISSING

    async def Delete(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        call = self._call("Delete", context)
        span = call.span
        try:
            try:
                key = parse_delete(raw).key
            except DecodeError:
                raise not_parsed(DeleteRequest) from None
            if not key or len(key) > KEY_CLEARED:
                check_key(key)
            existed = await (self._open or self._ready()).delete(key, call)
        except BaseException as error:
            await failed(call, error, context)
            raise
        if span is not None:
            span.end()
        return DELETED if existed else NOT_THERE

    async def Keys(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[kv_pb2.KeysResponse]:
        async with Handling(self._call("Keys", context), context) as call:
            prefix = parsed(kv_pb2.KeysRequest, raw).prefix
            async for page in self._ready().keys(prefix, call):
                yield kv_pb2.KeysResponse(keys=page)
