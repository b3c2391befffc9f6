"""The gRPC face of the proxy: turns requests into dispatcher calls, validates input, and maps
errors to status codes in one place. No routing and no storage logic lives here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from opentelemetry import trace
from turnout.kv.v1 import kv_pb2

from proxy.config import MAX_KEY_BYTES, Limits
from proxy.data.backendcall import UNNAMED
from proxy.data.dispatcher import Call, Dispatcher
from proxy.errors import BackendUnavailable, InvalidArgument, ReadOnly, TurnoutError
from proxy.jsonvalue import DocumentError, check_document
from proxy.serving.refusals import Handler, InFlight, in_flight_budget, released
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
#: Room for the key and the protobuf framing around the largest value.
MESSAGE_OVERHEAD = 64 * 1024
#: The transport takes requests well past max_value_bytes, so that an over-large value reaches
#: Set's value check and is refused with INVALID_ARGUMENT and a message saying the limit, as the contract
#: says; only a request past this ceiling is cut off by gRPC itself (RESOURCE_EXHAUSTED).
RECEIVE_CEILING_FACTOR = 4
MIN_RECEIVE_CEILING = 64 * 1024 * 1024
#: gRPC's message lengths are 32-bit signed integers.
MAX_GRPC_MESSAGE = 2**31 - 1
#: The longest a new data connection may take to complete its handshake.
HANDSHAKE_TIMEOUT_S = 10.0


def receive_limit(max_value_bytes: int) -> int:
    """The largest request the transport accepts for a given max_value_bytes."""
    ceiling = max(RECEIVE_CEILING_FACTOR * max_value_bytes, MIN_RECEIVE_CEILING) + MESSAGE_OVERHEAD
    return min(ceiling, MAX_GRPC_MESSAGE)

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


def add_key_value(service: KeyValueService, server: grpc.aio.Server, in_flight: InFlight | None = None) -> None:
    """Register the KeyValue calls as the generated add_KeyValueServicer_to_server does, but with the
    requests handed over as bytes (no request_deserializer), for the handlers to parse, and the unary
    replies handed back encoded; with in_flight,
    each handler frees a refused request at once and counts its request against the budget."""
    handlers: dict[str, Handler] = {
        # The unary handlers answer with their reply's encoding (no response_serializer).
        "Get": grpc.unary_unary_rpc_method_handler(service.Get),
        "Set": grpc.unary_unary_rpc_method_handler(service.Set),
        "Has": grpc.unary_unary_rpc_method_handler(service.Has),
        "Delete": grpc.unary_unary_rpc_method_handler(service.Delete),
        "Keys": grpc.unary_stream_rpc_method_handler(service.Keys,
                                                     response_serializer=kv_pb2.KeysResponse.SerializeToString),
    }
    if in_flight is not None:
        handlers = released(handlers, in_flight)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(KV_SERVICE, handlers),))
    server.add_registered_method_handlers(KV_SERVICE, handlers)


class ServiceHandlers:
    """Takes the server's place in a generated add_*Servicer_to_server function, to keep the handlers it
    would register."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Handler]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """The same handlers come again through add_registered_method_handlers, which keeps them."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        self.services[service] = handlers


def add_health_and_reflection(server: grpc.aio.Server, health_servicer: health.aio.HealthServicer,
                              in_flight: InFlight) -> None:
    """The health and reflection services, served through generic handlers only. grpc.aio keeps one
    request waiting per registered method and waits on all of them again for every call that arrives,
    so registering these rarely called methods (four) cost every KeyValue call about 6 % more
    instructions (callgrind, in the floor server); a generic handler is looked up only for a method
    that is not registered."""
    table = ServiceHandlers()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, table)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer((KV_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)), table)
    server.add_generic_rpc_handlers(tuple(grpc.method_handlers_generic_handler(name, released(handlers, in_flight))
                                          for name, handlers in table.services.items()))


def build_server(
    service: KeyValueService, health_servicer: health.aio.HealthServicer, max_value_bytes: int,
    reuse_port: bool = False, limits: Limits | None = None,
) -> grpc.aio.Server:
    limits = limits or Limits()
    # Refused requests are freed when their call ends, and requests held in flight stay in a budget.
    in_flight = InFlight(in_flight_budget(receive_limit(max_value_bytes)))
    server = grpc.aio.server(
        # Past it a call is refused (RESOURCE_EXHAUSTED) as soon as its headers arrive, before its
        # request is read: the requests being received are at most this many receive limits, over
        # every connection (issue 16, item 2). Health and reflection calls count too.
        maximum_concurrent_rpcs=limits.max_concurrent_calls,
        options=[
            # Without BDP probing a stream's window stays at HTTP/2's 64 KiB until its call reads it
            # (gRPC then opens it to the message's length): with probing it grows to megabytes, and
            # every call not yet read (or refused at the limit above) kept that much buffered, so
            # 64 connections of large Sets reached +600 MiB with only one call let in.
            ("grpc.http2.bdp_probe", 0),
            ("grpc.max_receive_message_length", receive_limit(max_value_bytes)),
            # Past max_connections a new connection is closed as soon as it is accepted, so a flood
            # cannot take the descriptors the stores, health and admin need (see app.fit_descriptors).
            ("grpc.max_allowed_incoming_connections", limits.max_connections),
            ("grpc.max_connection_idle_ms", round(limits.idle_timeout_s * 1000)),
            # A connection that never completes its HTTP/2 (or TLS) handshake is not idle to gRPC:
            # without this it keeps its descriptor for two minutes.
            ("grpc.server_handshake_timeout_ms", round(min(limits.idle_timeout_s, HANDSHAKE_TIMEOUT_S) * 1000)),
            # Sending is not limited: the old application may have stored a value past max_value_bytes
            # in its own file, and Get must still return it (the caller's channel decides what it takes).
            ("grpc.max_send_message_length", -1),
            # Off for a lone proxy, so a second one on the same port is refused, not load-balanced;
            # on for the workers of `--workers N`, which share the port on purpose.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    add_key_value(service, server, in_flight)
    add_health_and_reflection(server, health_servicer, in_flight)
    return server


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", KV_SERVICE):
        await health_servicer.set(name, status)
