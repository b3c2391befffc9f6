"""The Python client against a real `turnout serve`: JSON in and out, errors, deadlines, retries."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from turnout import (
    AsyncClient,
    DeadlineExceeded,
    InvalidArgument,
    KeyNotFound,
    RetryPolicy,
    SyncClient,
    TurnoutError,
    Unavailable,
)
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from tests.proxy_process import ProxyProcess


@pytest.fixture
async def client(memory_proxy: ProxyProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(memory_proxy.target) as kv:
        yield kv


async def test_async_client_round_trip(client: AsyncClient) -> None:
    """Documents go in as Python values and come back equal; null is found, absence is KeyNotFound."""
    await client.set("user:1", {"name": "Ada", "langs": ["en", "fr"], "score": 1.5})
    assert await client.get("user:1") == {"name": "Ada", "langs": ["en", "fr"], "score": 1.5}
    await client.set("nothing", None)
    assert await client.get("nothing") is None
    assert await client.has("nothing")
    with pytest.raises(KeyNotFound):
        await client.get("absent")
    assert await client.get_raw("absent") is None
    assert await client.delete("user:1")
    assert not await client.delete("user:1")
    await client.set_raw("raw", b' {"b": 2, "a": 1} ')
    assert await client.get("raw") == {"a": 1, "b": 2}


async def test_async_client_lists_keys_across_pages(client: AsyncClient) -> None:
    """keys() streams every key with the prefix, across server pages."""
    # Bounded concurrency: grpc.aio itself cancels some calls when one channel has thousands in flight.
    for start in range(0, 1500, 250):
        await asyncio.gather(*(client.set(f"k:{i:04}", i) for i in range(start, start + 250)))
    await client.set("other", 1)
    assert sorted([key async for key in client.keys("k:")]) == [f"k:{i:04}" for i in range(1500)]


async def test_invalid_input_raises_invalid_argument(client: AsyncClient) -> None:
    """The server's INVALID_ARGUMENT arrives as InvalidArgument with its message, and is not retried."""
    with pytest.raises(InvalidArgument, match="not one JSON document"):
        await client.set_raw("k", b"{oops")
    with pytest.raises(InvalidArgument, match="must not be empty"):
        await client.get("")
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        await client.set("k", float("nan"))


def test_sync_client_round_trip_with_caller_name(memory_proxy: ProxyProcess) -> None:
    """The sync client has the same surface and sends the caller's name."""
    with SyncClient(memory_proxy.target, user="checkout") as kv:
        kv.set("cart:42", {"items": [1, 2]})
        assert kv.get("cart:42") == {"items": [1, 2]}
        assert kv.has("cart:42")
        assert list(kv.keys("cart:")) == ["cart:42"]
        assert kv.delete("cart:42")
        with pytest.raises(KeyNotFound):
            kv.get("cart:42")


class ScriptedKeyValue(kv_pb2_grpc.KeyValueServicer):
    """A real gRPC server that fails the first calls with UNAVAILABLE, or answers slowly, on purpose."""

    def __init__(self, failures: int, delay: float = 0.0) -> None:
        self.failures = failures
        self.delay = delay
        self.calls = 0
        self.users: list[str | None] = []
        self._lock = threading.Lock()

    def Get(self, request: kv_pb2.GetRequest, context: grpc.ServicerContext) -> kv_pb2.GetResponse:
        with self._lock:
            self.calls += 1
            failing = self.calls <= self.failures
        self.users.append(dict(context.invocation_metadata()).get("x-turnout-user"))  # type: ignore[arg-type]
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "backend restarting")
        if self.delay:
            threading.Event().wait(self.delay)
        return kv_pb2.GetResponse(found=True, value=b'"ok"')


@pytest.fixture
def scripted() -> Iterator[tuple[str, Any]]:
    servers: list[grpc.Server] = []

    def start(failures: int, delay: float = 0.0) -> tuple[str, ScriptedKeyValue]:
        servicer = ScriptedKeyValue(failures, delay)  # type: ignore[abstract]  # only Get is called
        server = grpc.server(futures.ThreadPoolExecutor(4))
        kv_pb2_grpc.add_KeyValueServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", servicer

    yield "", start
    for server in servers:
        server.stop(0)


async def test_unavailable_is_retried_with_backoff(scripted: tuple[str, Any]) -> None:
    """Two UNAVAILABLE answers are retried and the third attempt's answer is returned."""
    target, servicer = scripted[1](failures=2)
    async with AsyncClient(target, user="svc", retry=RetryPolicy(attempts=5, first_backoff=0.01)) as kv:
        assert await kv.get("k") == "ok"
    assert servicer.calls == 3
    assert servicer.users == ["svc"] * 3


def test_sync_client_gives_up_after_its_attempts(scripted: tuple[str, Any]) -> None:
    """When every attempt is UNAVAILABLE, the client raises Unavailable after its configured attempts."""
    target, servicer = scripted[1](failures=100)
    with SyncClient(target, retry=RetryPolicy(attempts=3, first_backoff=0.01)) as kv, pytest.raises(Unavailable):
        kv.get("k")
    assert servicer.calls == 3


async def test_deadline_is_honoured(scripted: tuple[str, Any]) -> None:
    """A call slower than its deadline fails with DeadlineExceeded, not a hang."""
    target, _ = scripted[1](failures=0, delay=2.0)
    async with AsyncClient(target, timeout=0.2) as kv:
        with pytest.raises(DeadlineExceeded):
            await kv.get("k")


async def test_unreachable_proxy_is_unavailable() -> None:
    """With nothing listening, the client retries and then raises Unavailable within its deadline."""
    async with AsyncClient("127.0.0.1:1", timeout=1.0, retry=RetryPolicy(attempts=3, first_backoff=0.01)) as kv:
        with pytest.raises(TurnoutError) as err:
            await kv.get("k")
    assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
