"""A small typed client for the Turnout KeyValue API, async and sync, JSON in and out.

Every call has a deadline. UNAVAILABLE is retried with exponential backoff and jitter within the
deadline; nothing else is. Retrying a Set is safe (it is idempotent); a retried Delete may report
`existed=False` when the first attempt had in fact removed the key.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc import aio

from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

USER_METADATA = "x-turnout-user"
#: Values up to the server's default 4 MiB limit, plus room for the key and framing.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024 + 64 * 1024

T = TypeVar("T")


class TurnoutError(Exception):
    """A call failed; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(TurnoutError):
    """The request was refused as malformed (bad key, not one JSON document, too large)."""


class Unavailable(TurnoutError):
    """The proxy or its primary backend could not serve the call, or writes are paused."""


class DeadlineExceeded(TurnoutError):
    """The call did not finish within its deadline."""


class KeyNotFound(KeyError):
    """`get` of a key that is not stored (a stored JSON null is found and returns None)."""


_ERRORS: dict[grpc.StatusCode, type[TurnoutError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def error_from(exc: grpc.RpcError) -> TurnoutError:
    """The one mapping from gRPC errors to the client's exceptions."""
    code = exc.code() if isinstance(exc, grpc.Call | aio.AioRpcError) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call | aio.AioRpcError) else str(exc)
    return _ERRORS.get(code, TurnoutError)(code, details or "")


def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    first_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        """Full-jitter exponential backoff between attempts."""
        ceiling = self.first_backoff
        for _ in range(self.attempts - 1):
            yield random.uniform(0, ceiling)
            ceiling = min(ceiling * self.multiplier, self.max_backoff)


def _options() -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


class _Settings:
    def __init__(self, user: str | None, timeout: float, retry: RetryPolicy) -> None:
        self.metadata: tuple[tuple[str, str], ...] = ((USER_METADATA, user),) if user else ()
        self.timeout = timeout
        self.retry = retry


class AsyncClient:
    """KeyValue over grpc.aio. Use as `async with AsyncClient(target) as kv:`."""

    def __init__(self, target: str, *, user: str | None = None, timeout: float = 5.0,
                 retry: RetryPolicy = RetryPolicy(), channel: aio.Channel | None = None) -> None:
        self._channel = channel or aio.insecure_channel(target, options=_options())
        self._stub = kv_pb2_grpc.KeyValueStub(self._channel)
        self._settings = _Settings(user, timeout, retry)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(self, call: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        budget = self._settings.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        delays = self._settings.retry.delays()
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await call(request, timeout=max(remaining, 0.001), metadata=self._settings.metadata)
            except aio.AioRpcError as exc:
                delay = next(delays, None)
                if exc.code() != grpc.StatusCode.UNAVAILABLE or delay is None or time.monotonic() + delay >= deadline:
                    raise error_from(exc) from None
                await asyncio.sleep(delay)

    async def get_raw(self, key: str, *, timeout: float | None = None) -> bytes | None:
        """The stored JSON text, or None when the key is absent."""
        reply = await self._unary(self._stub.Get, kv_pb2.GetRequest(key=key), timeout)
        return bytes(reply.value) if reply.found else None

    async def get(self, key: str, *, timeout: float | None = None) -> Any:
        """The stored document, decoded; raises KeyNotFound when the key is absent."""
        raw = await self.get_raw(key, timeout=timeout)
        if raw is None:
            raise KeyNotFound(key)
        return json.loads(raw)

    async def set_raw(self, key: str, value: bytes, *, timeout: float | None = None) -> None:
        await self._unary(self._stub.Set, kv_pb2.SetRequest(key=key, value=value), timeout)

    async def set(self, key: str, value: Any, *, timeout: float | None = None) -> None:
        await self.set_raw(key, encode(value), timeout=timeout)

    async def has(self, key: str, *, timeout: float | None = None) -> bool:
        reply = await self._unary(self._stub.Has, kv_pb2.HasRequest(key=key), timeout)
        return bool(reply.found)

    async def delete(self, key: str, *, timeout: float | None = None) -> bool:
        """Remove the key; True when it existed."""
        reply = await self._unary(self._stub.Delete, kv_pb2.DeleteRequest(key=key), timeout)
        return bool(reply.existed)

    async def keys(self, prefix: str = "", *, timeout: float | None = None) -> AsyncIterator[str]:
        """Every key starting with prefix, streamed page by page (not retried once started)."""
        call = self._stub.Keys(kv_pb2.KeysRequest(prefix=prefix), metadata=self._settings.metadata,
                               timeout=self._settings.timeout if timeout is None else timeout)
        try:
            async for page in call:
                for key in page.keys:
                    yield key
        except aio.AioRpcError as exc:
            raise error_from(exc) from None


class SyncClient:
    """KeyValue over a plain grpc channel. Use as `with SyncClient(target) as kv:`."""

    def __init__(self, target: str, *, user: str | None = None, timeout: float = 5.0,
                 retry: RetryPolicy = RetryPolicy(), channel: grpc.Channel | None = None) -> None:
        self._channel = channel or grpc.insecure_channel(target, options=_options())
        self._stub = kv_pb2_grpc.KeyValueStub(self._channel)
        self._settings = _Settings(user, timeout, retry)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _unary(self, call: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        budget = self._settings.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        delays = self._settings.retry.delays()
        while True:
            remaining = deadline - time.monotonic()
            try:
                return call(request, timeout=max(remaining, 0.001), metadata=self._settings.metadata)
            except grpc.RpcError as exc:
                delay = next(delays, None)
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code != grpc.StatusCode.UNAVAILABLE or delay is None or time.monotonic() + delay >= deadline:
                    raise error_from(exc) from None
                time.sleep(delay)

    def get_raw(self, key: str, *, timeout: float | None = None) -> bytes | None:
        reply = self._unary(self._stub.Get, kv_pb2.GetRequest(key=key), timeout)
        return bytes(reply.value) if reply.found else None

    def get(self, key: str, *, timeout: float | None = None) -> Any:
        raw = self.get_raw(key, timeout=timeout)
        if raw is None:
            raise KeyNotFound(key)
        return json.loads(raw)

    def set_raw(self, key: str, value: bytes, *, timeout: float | None = None) -> None:
        self._unary(self._stub.Set, kv_pb2.SetRequest(key=key, value=value), timeout)

    def set(self, key: str, value: Any, *, timeout: float | None = None) -> None:
        self.set_raw(key, encode(value), timeout=timeout)

    def has(self, key: str, *, timeout: float | None = None) -> bool:
        return bool(self._unary(self._stub.Has, kv_pb2.HasRequest(key=key), timeout).found)

    def delete(self, key: str, *, timeout: float | None = None) -> bool:
        return bool(self._unary(self._stub.Delete, kv_pb2.DeleteRequest(key=key), timeout).existed)

    def keys(self, prefix: str = "", *, timeout: float | None = None) -> Iterator[str]:
        call = self._stub.Keys(kv_pb2.KeysRequest(prefix=prefix), metadata=self._settings.metadata,
                               timeout=self._settings.timeout if timeout is None else timeout)
        try:
            for page in call:
                yield from page.keys
        except grpc.RpcError as exc:
            raise error_from(exc) from None
