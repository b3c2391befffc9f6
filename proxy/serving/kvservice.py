"""The gRPC face of the proxy: turns requests into dispatcher calls, validates input, and maps
errors to status codes in one place. No routing and no storage logic lives here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from proxy.data.dispatcher import Call, Dispatcher
from proxy.errors import BackendUnavailable, InvalidArgument, ReadOnly, TurnoutError
from proxy.serving.validation import check_key, check_value
from proxy.telemetry.tracing import Telemetry

log = logging.getLogger(__name__)

USER_METADATA = "x-turnout-user"
KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KeyValue"].full_name
#: Room for the key and the protobuf framing around the largest value.
MESSAGE_OVERHEAD = 64 * 1024
#: The transport takes requests well past max_value_bytes, so that an over-large value reaches
#: check_value and is refused with INVALID_ARGUMENT and a message saying the limit, as the contract
#: says; only a request past this ceiling is cut off by gRPC itself (RESOURCE_EXHAUSTED).
RECEIVE_CEILING_FACTOR = 4
MIN_RECEIVE_CEILING = 64 * 1024 * 1024
#: gRPC's message lengths are 32-bit signed integers.
MAX_GRPC_MESSAGE = 2**31 - 1


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


class Handling:
    """The one error-and-span context of every handler: an expected error becomes its status code
    (and an error on the call's span), and the span ends however the call ends.

    A class rather than a generator-based context manager: it sits on every call, and costs one
    small object instead of a generator.
    """

    __slots__ = ("_context", "call")

    def __init__(self, call: Call, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.call = call
        self._context = context

    async def __aenter__(self) -> Call:
        return self.call

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        span = self.call.span
        if error is None:
            if span is not None:
                span.end()
            return
        if isinstance(error, TurnoutError):
            code = status_for(error)
            if span is not None:
                span.set_status(trace.StatusCode.ERROR, f"{code.name}: {error}")
                span.end()
            await self._context.abort(code, str(error))
        if span is not None:  # a programming error: INTERNAL, and the span still ends
            span.set_status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}")
            span.end()


class KeyValueService(kv_pb2_grpc.KeyValueServicer):
    def __init__(self, dispatcher: Callable[[], Dispatcher | None], max_value_bytes: int,
                 telemetry: Telemetry | None = None) -> None:
        # A callable, so the service can be registered before the backends are open.
        self._dispatcher = dispatcher
        self._max_value_bytes = max_value_bytes
        self._telemetry = telemetry or Telemetry(enabled=False)

    def _ready(self) -> Dispatcher:
        dispatcher = self._dispatcher()
        if dispatcher is None:
            raise BackendUnavailable("turnout is starting: backends not open yet")
        return dispatcher

    def _handling(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Handling:
        metadata = context.invocation_metadata()
        return Handling(Call(caller_of(metadata), self._telemetry.server_span(method, metadata)), context)

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> kv_pb2.GetResponse:
        async with self._handling("Get", context) as call:
            check_key(request.key)
            value = await self._ready().get(request.key, call)
        if value is None:
            return kv_pb2.GetResponse(found=False)
        return kv_pb2.GetResponse(found=True, value=value)

    async def Set(self, request: kv_pb2.SetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> kv_pb2.SetResponse:
        async with self._handling("Set", context) as call:
            check_key(request.key)
            check_value(request.value, self._max_value_bytes)
            await self._ready().set(request.key, request.value, call)
        return kv_pb2.SetResponse()

    async def Has(self, request: kv_pb2.HasRequest, context: grpc.aio.ServicerContext[Any, Any]) -> kv_pb2.HasResponse:
        async with self._handling("Has", context) as call:
            check_key(request.key)
            found = await self._ready().has(request.key, call)
        return kv_pb2.HasResponse(found=found)

    async def Delete(
        self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.DeleteResponse:
        async with self._handling("Delete", context) as call:
            check_key(request.key)
            existed = await self._ready().delete(request.key, call)
        return kv_pb2.DeleteResponse(existed=existed)

    async def Keys(
        self, request: kv_pb2.KeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[kv_pb2.KeysResponse]:
        async with self._handling("Keys", context) as call:
            async for page in self._ready().keys(request.prefix, call):
                yield kv_pb2.KeysResponse(keys=page)


def build_server(
    service: KeyValueService, health_servicer: health.aio.HealthServicer, max_value_bytes: int,
    reuse_port: bool = False,
) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", receive_limit(max_value_bytes)),
            # Sending is not limited: the old application may have stored a value past max_value_bytes
            # in its own file, and Get must still return it (the caller's channel decides what it takes).
            ("grpc.max_send_message_length", -1),
            # Off for a lone proxy, so a second one on the same port is refused, not load-balanced;
            # on for the workers of `--workers N`, which share the port on purpose.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    kv_pb2_grpc.add_KeyValueServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((KV_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", KV_SERVICE):
        await health_servicer.set(name, status)
