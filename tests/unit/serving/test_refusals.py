"""What proxy/serving/refusals.py holds: an aborted call frees its request without the cyclic collector,
and the requests handlers hold at once stay within the in-flight byte budget."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from proxy.data.dispatcher import Dispatcher
from proxy.routing.flags import Flags
from proxy.routing.router import Router
from proxy.serving.kvservice import KV_SERVICE, KeyValueService
from proxy.serving.refusals import MIB, InFlight
from proxy.serving.server import add_key_value, build_server

MAX_VALUE_BYTES = 1 * MIB


@pytest.fixture
async def set_bytes() -> AsyncIterator[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]]:
    """Set on an in-process server built as `turnout serve` builds it (no backends open), taking the
    request already serialized, so that only the server ever holds a SetRequest."""
    server = build_server(KeyValueService(lambda: None, MAX_VALUE_BYTES), health.aio.HealthServicer(),
                          MAX_VALUE_BYTES)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel.unary_unary(f"/{KV_SERVICE}/Set")
    finally:
        await server.stop(0)


def live_requests(kind: type) -> int:
    return sum(1 for thing in gc.get_objects() if type(thing) is kind)


@pytest.mark.parametrize("oversize", ["value", "key"])
async def test_a_refused_request_is_freed_when_its_call_ends(
    set_bytes: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes], oversize: str
) -> None:
    """A request refused with INVALID_ARGUMENT is gone once its call ends, with the cyclic collector off."""
    key = "k" * (2 * MIB) if oversize == "key" else "a"
    value = b"1" * (2 * MIB) if oversize == "value" else b"1"
    request = kv_pb2.SetRequest(key=key, value=value).SerializeToString()
    gc.collect()
    gc.disable()
    try:
        before = live_requests(kv_pb2.SetRequest)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await set_bytes(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The status reaches the client a moment before the server's handler has unwound.
        for _ in range(1000):
            if live_requests(kv_pb2.SetRequest) == before:
                break
            await asyncio.sleep(0.001)
        assert live_requests(kv_pb2.SetRequest) == before
    finally:
        gc.enable()


def test_the_budget_takes_requests_until_full_and_again_once_they_end() -> None:
    """A request that would take the held bytes past the budget is refused, saying so, until others end."""
    in_flight = InFlight(budget=100 * MIB)
    assert in_flight.refusal(60 * MIB) is None
    why = in_flight.refusal(60 * MIB)
    assert why is not None
    assert "budget 100 MiB" in why
    assert "retry later" in why
    assert in_flight.held == 60 * MIB
    in_flight.held -= 60 * MIB
    assert in_flight.refusal(60 * MIB) is None


def test_a_lone_request_larger_than_the_budget_is_still_taken() -> None:
    """With nothing in flight, one request is taken whatever its size (the receive limit bounds it)."""
    assert InFlight(budget=10 * MIB).refusal(50 * MIB) is None


class HeldWrites:
    """A dispatcher stand-in whose writes wait until released, as writes to a stalled store do."""

    def __init__(self, count: int) -> None:
        self.routes = SimpleNamespace(router=Router(Flags()))
        self.release = asyncio.Event()
        self.all_waiting = asyncio.Event()
        self._count = count
        self._waiting = 0

    async def set(self, key: str, value: bytes, call: object) -> None:
        self._waiting += 1
        if self._waiting >= self._count:
            self.all_waiting.set()
        await self.release.wait()


async def test_writes_past_the_in_flight_budget_are_refused_until_others_end() -> None:
    """With three 1 MiB writes held by a stalled store and a 3 MiB budget, a fourth gets RESOURCE_EXHAUSTED
    saying so, and once the three end a write is taken again."""
    held = HeldWrites(3)
    server = grpc.aio.server()
    add_key_value(KeyValueService(lambda: cast(Dispatcher, held), MAX_VALUE_BYTES), server,
                  InFlight(budget=3 * MIB + 1024))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    value = b'"' + b"x" * (MIB - 16) + b'"'
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = kv_pb2_grpc.KeyValueStub(channel)
            stalled = [asyncio.ensure_future(stub.Set(kv_pb2.SetRequest(key=f"k{n}", value=value), timeout=10))
                       for n in range(3)]
            await asyncio.wait_for(held.all_waiting.wait(), 10)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Set(kv_pb2.SetRequest(key="k3", value=value), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "in flight" in (refused.value.details() or "")
            held.release.set()
            await asyncio.gather(*stalled)
            await stub.Set(kv_pb2.SetRequest(key="k4", value=value), timeout=10)
    finally:
        await server.stop(0)
