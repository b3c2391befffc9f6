"""The gRPC face of the proxy: turns requests into dispatcher calls, validates input, and maps
errors to status codes in one place. No routing and no storage logic lives here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from proxy.dispatcher import Dispatcher
from proxy.errors import BackendUnavailable, InvalidArgument, ReadOnly, TurnoutError
from proxy.validation import check_key, check_value

log = logging.getLogger(__name__)

USER_METADATA = "x-turnout-user"
KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KeyValue"].full_name
#: Room for the key and the protobuf framing around the largest value.
MESSAGE_OVERHEAD = 64 * 1024

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


class AbortWith(Exception):
    """Carries the status a handler must end with out of the synchronous error mapper."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@contextmanager
def map_errors() -> Iterator[None]:
    try:
        yield
    except TurnoutError as exc:
        raise AbortWith(status_for(exc), str(exc)) from exc


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == USER_METADATA:
            return value if isinstance(value, str) else value.decode()
    return None


class KeyValueService(kv_pb2_grpc.KeyValueServicer):
    def __init__(self, dispatcher: Callable[[], Dispatcher | None], max_value_bytes: int) -> None:
        # A callable, so the service can be registered before the backends are open.
        self._dispatcher = dispatcher
        self._max_value_bytes = max_value_bytes

    def _ready(self) -> Dispatcher:
        dispatcher = self._dispatcher()
        if dispatcher is None:
            raise AbortWith(grpc.StatusCode.UNAVAILABLE, "turnout is starting: backends not open yet")
        return dispatcher

    async def Get(
        self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext[kv_pb2.GetRequest, kv_pb2.GetResponse]
    ) -> kv_pb2.GetResponse:
        try:
            with map_errors():
                check_key(request.key)
                value = await self._ready().get(request.key, caller_of(context))
        except AbortWith as exc:
            await context.abort(exc.code, exc.message)
        if value is None:
            return kv_pb2.GetResponse(found=False)
        return kv_pb2.GetResponse(found=True, value=value)

    async def Set(
        self, request: kv_pb2.SetRequest, context: grpc.aio.ServicerContext[kv_pb2.SetRequest, kv_pb2.SetResponse]
    ) -> kv_pb2.SetResponse:
        try:
            with map_errors():
                check_key(request.key)
                check_value(request.value, self._max_value_bytes)
                await self._ready().set(request.key, request.value, caller_of(context))
        except AbortWith as exc:
            await context.abort(exc.code, exc.message)
        return kv_pb2.SetResponse()

    async def Has(
        self, request: kv_pb2.HasRequest, context: grpc.aio.ServicerContext[kv_pb2.HasRequest, kv_pb2.HasResponse]
    ) -> kv_pb2.HasResponse:
        try:
            with map_errors():
                check_key(request.key)
                found = await self._ready().has(request.key, caller_of(context))
        except AbortWith as exc:
            await context.abort(exc.code, exc.message)
        return kv_pb2.HasResponse(found=found)

    async def Delete(
        self,
        request: kv_pb2.DeleteRequest,
        context: grpc.aio.ServicerContext[kv_pb2.DeleteRequest, kv_pb2.DeleteResponse],
    ) -> kv_pb2.DeleteResponse:
        try:
            with map_errors():
                check_key(request.key)
                existed = await self._ready().delete(request.key, caller_of(context))
        except AbortWith as exc:
            await context.abort(exc.code, exc.message)
        return kv_pb2.DeleteResponse(existed=existed)

    async def Keys(
        self, request: kv_pb2.KeysRequest, context: grpc.aio.ServicerContext[kv_pb2.KeysRequest, kv_pb2.KeysResponse]
    ) -> AsyncIterator[kv_pb2.KeysResponse]:
        try:
            with map_errors():
                pages = self._ready().keys(request.prefix, caller_of(context))
                async for page in pages:
                    yield kv_pb2.KeysResponse(keys=page)
        except AbortWith as exc:
            await context.abort(exc.code, exc.message)


def build_server(
    service: KeyValueService, health_servicer: health.aio.HealthServicer, max_value_bytes: int
) -> grpc.aio.Server:
    limit = max_value_bytes + MESSAGE_OVERHEAD
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
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
