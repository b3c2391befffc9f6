"""The data plane's gRPC server, put together: the KeyValue handlers (proxy.serving.kvservice) with
the refusal wrapper, health and reflection, and the transport's limits (issue 16).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from turnout.kv.v1 import kv_pb2

from proxy.config import Limits
from proxy.serving.kvservice import KV_SERVICE, KeyValueService
from proxy.serving.refusals import Handler, InFlight, in_flight_budget, released

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
