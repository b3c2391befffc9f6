"""The `grpc` store: another KeyValue service (a remote `turnout serve`, or any server of the
`turnout.kv.v1` API) used as a backend, over one grpc.aio channel.

Each operation is the API's call of the same name, with `call_timeout` as its deadline and gRPC's
own retries (upstream_channel says which calls are retried and why). The bulk operations have no
call of their own in the API, so they are many single calls at once, at most `BULK_CONCURRENCY` in
flight for one bulk operation: scan lists keys page by page and gets each page's values, skipping a
key deleted in between. Writes to one key are sent one after the other in the order they were
issued (upstream_order), as a server may run concurrent calls in any order.

The channel connects lazily, so opening never waits for the server: a proxy whose upstream is down
starts with this store unhealthy and its calls raising BackendUnavailable, and the channel
reconnects by itself (quickly, see the reconnect backoff) once the server is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from proxy.backends.base import DEFAULT_PAGE_SIZE, Item, Key, Value
from proxy.backends.upstream_channel import failure, open_channel
from proxy.backends.upstream_order import Place, WriteOrder
from proxy.errors import BackendUnavailable

if TYPE_CHECKING:
    from turnout.kv.v1.kv_pb2_grpc import KeyValueAsyncStub

    from proxy.config import BackendSpec

#: Calls one bulk operation (scan's page, get_many, set_many) keeps in flight at once.
BULK_CONCURRENCY = 64
#: Single calls the store keeps in flight on its channel at once; the rest wait their turn (within
#: their deadline). With grpcio 1.85, past about 1,500 calls in flight on one connection some end
#: CANCELLED with no reason given (a bare grpc.aio server does it too, not only turnout), so
#: thousands of concurrent callers must not all be sent together.
CALLS_IN_FLIGHT = 256
#: The shortest deadline worth sending: gRPC refuses a zero or negative timeout outright.
_SHORTEST_DEADLINE_S = 0.001

T = TypeVar("T")
Request = TypeVar("Request")
Reply = TypeVar("Reply")


class UpstreamBackend:
    """A store that is another KeyValue service; `target` is its address as the config gives it."""

    type_name = "grpc"
    #: The API promises every key once, in pages, but no order (contract §1).
    ordered_scan = False

    def __init__(self, channel: aio.Channel, target: str, call_timeout: float, connect_timeout: float) -> None:
        self.target = target
        self._channel = channel
        self._stub: KeyValueAsyncStub = kv_pb2_grpc.KeyValueStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self._call_timeout = call_timeout
        self._connect_timeout = connect_timeout
        self._order = WriteOrder()
        self._slots = asyncio.Semaphore(CALLS_IN_FLIGHT)
        self._closed = False

    @classmethod
    async def open(cls, spec: BackendSpec) -> UpstreamBackend:
        """The store of spec.options["target"]; returns at once, whether the server is up or not."""
        options = spec.options
        return cls(open_channel(options), str(options["target"]), float(options["call_timeout"]),
                   float(options["connect_timeout"]))

    @contextmanager
    def _failures(self, call: str) -> Iterator[None]:
        """Translate a failed call into the proxy's errors, at this one boundary."""
        if self._closed:
            raise BackendUnavailable(f"grpc store {self.target}: closed")
        try:
            yield
        except aio.AioRpcError as exc:
            raise failure(exc, self.target, call) from None
        except TimeoutError:
            raise BackendUnavailable(
                f"grpc store {self.target}: {call}: no answer within {self._call_timeout:g} s") from None

    async def _unary(self, call: aio.UnaryUnaryMultiCallable[Request, Reply], request: Request) -> Reply:
        """One call within call_timeout, its wait for a free slot included."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._call_timeout
        async with asyncio.timeout_at(deadline):
            await self._slots.acquire()
        try:
            return await call(request, timeout=max(deadline - loop.time(), _SHORTEST_DEADLINE_S))
        finally:
            self._slots.release()

    async def get(self, key: Key) -> Value | None:
        with self._failures("Get"):
            reply = await self._unary(self._stub.Get, kv_pb2.GetRequest(key=key))
        return reply.value if reply.found else None

    async def has(self, key: Key) -> bool:
        with self._failures("Has"):
            reply = await self._unary(self._stub.Has, kv_pb2.HasRequest(key=key))
        return reply.found

    async def set(self, key: Key, value: Value) -> None:
        async with self._order.turn(key):
            await self._set_now(key, value)

    async def _set_now(self, key: Key, value: Value) -> None:
        with self._failures("Set"):
            await self._unary(self._stub.Set, kv_pb2.SetRequest(key=key, value=value))

    async def delete(self, key: Key) -> bool:
        async with self._order.turn(key):
            with self._failures("Delete"):
                reply = await self._unary(self._stub.Delete, kv_pb2.DeleteRequest(key=key))
        return reply.existed

    async def keys(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Key]]:
        # No deadline on the whole stream: listing a large store (a migration) takes as long as its
        # reader does. Instead each page of the upstream must come within call_timeout.
        with self._failures("Keys"):
            call = self._stub.Keys(kv_pb2.KeysRequest(prefix=prefix))
        try:
            page: list[Key] = []
            while True:
                with self._failures("Keys"):
                    async with asyncio.timeout(self._call_timeout):
                        reply = await call.read()
                if reply is aio.EOF:
                    break
                assert isinstance(reply, kv_pb2.KeysResponse)
                for key in reply.keys:
                    page.append(key)
                    if len(page) == page_size:
                        yield page
                        page = []
            if page:
                yield page
        finally:
            call.cancel()  # a reader that stops early (or failed) ends the stream on the server too

    async def scan(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Item]]:
        async for keys in self.keys(prefix, page_size):
            values = await self.get_many(keys)
            # A key listed and then deleted before its Get is no longer in the store: skipped.
            page = [(key, value) for key, value in zip(keys, values, strict=True) if value is not None]
            if page:
                yield page

    async def get_many(self, keys: Sequence[Key]) -> list[Value | None]:
        return await _bounded(self.get, keys)

    async def set_many(self, items: Sequence[Item]) -> None:
        # A key given twice keeps its last document, as one set after the other would leave it.
        latest = dict(items)
        # Every key's place is taken now, before any await, so the batch is ordered among the
        # writes issued around it; each place is given back when its task ends, even one never run.
        places = self._order.take_places(latest)
        limit = asyncio.Semaphore(BULK_CONCURRENCY)

        async def write(place: Place) -> None:
            await self._order.wait_turn(place)
            async with limit:  # taken only once the turn came, so a waiting write holds no slot
                await self._set_now(place.key, latest[place.key])

        tasks = []
        for place in places:
            task = asyncio.ensure_future(write(place))
            task.add_done_callback(partial(self._release, place))
            tasks.append(task)
        await asyncio.gather(*tasks)

    def _release(self, place: Place, _: object) -> None:
        self._order.release(place)

    async def probe(self) -> None:
        """The standard health check of the whole server, waiting for a connection up to connect_timeout."""
        with self._failures("Health.Check"):
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=""),
                                             timeout=self._connect_timeout, wait_for_ready=True)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise BackendUnavailable(f"grpc store {self.target}: the server says it is not serving")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Calls under way (an acknowledged write among them) get their deadline to finish.
        await self._channel.close(grace=self._call_timeout)


async def _bounded(call: Callable[[Key], Awaitable[T]], keys: Sequence[Key]) -> list[T]:
    """call(key) for every key, at most BULK_CONCURRENCY at once; the results in the keys' order."""
    limit = asyncio.Semaphore(BULK_CONCURRENCY)

    async def one(key: Key) -> T:
        async with limit:  # the call is made only once a slot is free, so none is left unawaited
            return await call(key)

    return list(await asyncio.gather(*(one(key) for key in keys)))
