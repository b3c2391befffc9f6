"""A small typed client for the Turnout KeyValue API, async and sync, JSON in and out.

`AsyncClient` runs on grpc.aio, `SyncClient` on a plain grpc channel; both have the same methods.
Values are JSON documents: `set` encodes a Python value, `get` decodes it; `get_raw`/`set_raw`
carry the JSON text as bytes. A stored JSON null is a value (`get` returns None); an absent key
raises `KeyNotFound`.

Every call has a deadline (the client's `timeout`, or the call's own). UNAVAILABLE, and only
UNAVAILABLE, is retried with full-jitter exponential backoff, for at most `RetryPolicy.attempts`
attempts and never past the deadline. Retrying is safe for every method: Get, Has and Keys only
read; Set is idempotent (storing the same document twice leaves the same state); a retried Delete
removes the key all the same, though its `existed` may read False when an earlier attempt that
failed in transit had in fact removed it. `Keys` is retried only before its first page arrives, so
no key is ever yielded twice.

`tls` reaches a data port that speaks TLS (the proxy's `tls:` config): `TlsSettings` names the CA
to trust and, for mTLS, the client's certificate and key; a `grpc.ChannelCredentials` of the
caller's own is taken as it is. `token` sends `authorization: Bearer <token>` on every call, for a
gateway in front of the proxy that asks for one (the proxy's data port itself asks for none).

This module depends on grpcio and protobuf only, so services can install it without the proxy.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from grpc import aio

from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

#: The gRPC metadata that carries the caller's name; the proxy routes on it.
USER_METADATA = "x-turnout-user"
#: The gRPC metadata that carries a bearer token, when the client is given one.
AUTHORIZATION_METADATA = "authorization"
#: No message size limit of the channel's own (gRPC's default takes at most 4 MiB in): the proxy's
#: `max_value_bytes` is the one limit. It may be set above 4 MiB, the old application may have stored
#: a larger value, and a value over the limit must reach the proxy to be refused with its message.
UNLIMITED = -1
#: The shortest deadline worth sending: gRPC refuses a zero or negative timeout outright.
_MIN_ATTEMPT_S = 0.001

Request = TypeVar("Request")
Response = TypeVar("Response")
_Channel = TypeVar("_Channel", aio.Channel, grpc.Channel)


class TurnoutError(Exception):
    """A call failed; `code` is the gRPC status code, `message` the server's explanation."""

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

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


_ERRORS: dict[grpc.StatusCode, type[TurnoutError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def _code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    # Every error a call raises is also a grpc.Call (sync) or an AioRpcError; a bare RpcError is not.
    if isinstance(exc, grpc.Call | aio.AioRpcError):
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.UNKNOWN


def error_from(exc: grpc.RpcError) -> TurnoutError:
    """The one mapping from gRPC errors to the client's exceptions."""
    details = exc.details() if isinstance(exc, grpc.Call | aio.AioRpcError) else str(exc)
    code = _code_of(exc)
    return _ERRORS.get(code, TurnoutError)(code, details or "")


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities raise ValueError, as JSON has no such numbers."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How UNAVAILABLE is retried: at most `attempts` tries in all, backoff growing to `max_backoff`."""

    attempts: int = 5
    first_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.first_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("RetryPolicy backoffs must not be negative and multiplier must be at least 1")

    def delays(self) -> Iterator[float]:
        """Full-jitter exponential backoff: one delay before each attempt after the first."""
        # Full jitter spreads the retries of many clients that failed together over the whole window.
        ceiling = self.first_backoff
        for _ in range(self.attempts - 1):
            yield random.uniform(0, ceiling)
            ceiling = min(ceiling * self.multiplier, self.max_backoff)


#: Retry only UNAVAILABLE; a single attempt is `RetryPolicy(attempts=1)`.
DEFAULT_RETRY = RetryPolicy()


class _Attempts:
    """One call's budget: its deadline, and the backoff delays it has left."""

    def __init__(self, budget: float, retry: RetryPolicy) -> None:
        self._deadline = time.monotonic() + budget
        self._delays = retry.delays()

    def remaining(self) -> float:
        return max(self._deadline - time.monotonic(), _MIN_ATTEMPT_S)

    def delay_before_retry(self, exc: grpc.RpcError) -> float | None:
        """How long to wait before trying again, or None when exc is final."""
        if _code_of(exc) != grpc.StatusCode.UNAVAILABLE:
            return None
        delay = next(self._delays, None)
        if delay is None or time.monotonic() + delay >= self._deadline:
            return None
        return delay


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS to the proxy: the CA that signed its certificate (None: the system's roots), and for mTLS
    the client's certificate chain and key, all PEM files."""

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TlsSettings: cert_file and key_file go together (a client certificate needs its key)")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials of these files; ValueError naming the setting of a file that cannot be read."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca_file, "ca_file"),
            private_key=_read_pem(self.key_file, "key_file"),
            certificate_chain=_read_pem(self.cert_file, "cert_file"),
        )


def _read_pem(path: str | Path | None, setting: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"TlsSettings.{setting}: cannot read {path}: {exc.strerror or exc}") from None


def _credentials(tls: TlsSettings | grpc.ChannelCredentials | None, channel: object) -> grpc.ChannelCredentials | None:
    if tls is not None and channel is not None:
        raise ValueError("tls: a channel passed in has its own credentials; give tls or channel, not both")
    return tls.credentials() if isinstance(tls, TlsSettings) else tls


def _opener(
    tls: TlsSettings | grpc.ChannelCredentials | None, channel: object,
    insecure: Callable[[str, list[tuple[str, int]]], _Channel],
    secure: Callable[[str, grpc.ChannelCredentials, list[tuple[str, int]]], _Channel],
) -> Callable[[str, list[tuple[str, int]]], _Channel]:
    """How a client opens its channel: plaintext, or with the credentials `tls` gives (sync or aio)."""
    credentials = _credentials(tls, channel)

    def open_channel(address: str, options: list[tuple[str, int]]) -> _Channel:
        if credentials is None:
            return insecure(address, options)
        return secure(address, credentials, options)

    return open_channel


@dataclass(frozen=True, slots=True)
class _CallSettings:
    """What every call of one client sends: the caller's name and the default deadline."""

    metadata: tuple[tuple[str, str], ...]
    timeout: float
    retry: RetryPolicy

    @classmethod
    def of(cls, user: str | None, timeout: float, retry: RetryPolicy, token: str | None = None) -> _CallSettings:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if token is not None and (not token or any(not "!" <= c <= "~" for c in token)):
            raise ValueError("token must be one word of visible ASCII (it travels as a header value)")
        metadata: tuple[tuple[str, str], ...] = ((USER_METADATA, user),) if user else ()
        if token:
            metadata += ((AUTHORIZATION_METADATA, f"Bearer {token}"),)
        return cls(metadata, timeout, retry)

    def attempts(self, timeout: float | None) -> _Attempts:
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        return _Attempts(self.timeout if timeout is None else timeout, self.retry)


def _channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", UNLIMITED),
        ("grpc.max_receive_message_length", UNLIMITED),
    ]


class _Client(Generic[_Channel]):
    """What both clients share: the call settings, and a channel that is theirs to close only when
    they opened it (with `open_channel`); a `channel` passed in stays the caller's."""

    def __init__(
        self,
        target: str,
        open_channel: Callable[[str, list[tuple[str, int]]], _Channel],
        channel: _Channel | None,
        user: str | None,
        timeout: float,
        retry: RetryPolicy,
        token: str | None = None,
    ) -> None:
        self._settings = _CallSettings.of(user, timeout, retry, token)
        self._owns_channel = channel is None
        self._channel: _Channel = channel or open_channel(target, _channel_options())

    def _channel_to_close(self) -> _Channel | None:
        """The channel when this client opened it, else None (the caller closes its own)."""
        return self._channel if self._owns_channel else None


class AsyncClient(_Client[aio.Channel]):
    """KeyValue over grpc.aio. Use as `async with AsyncClient("host:port", user="checkout") as kv:`.

    `timeout` is the default deadline of each call in seconds (each method also takes its own);
    `retry` says how UNAVAILABLE is retried. A `channel` passed in stays the caller's to close.
    `tls` and `token`: see the module docstring (without `tls`, the channel is plaintext).
    """

    def __init__(
        self,
        target: str,
        *,
        user: str | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        channel: aio.Channel | None = None,
        tls: TlsSettings | grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        open_channel = _opener(tls, channel, aio.insecure_channel, aio.secure_channel)
        super().__init__(target, open_channel, channel, user, timeout, retry, token)
        self._stub = kv_pb2_grpc.KeyValueStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if (channel := self._channel_to_close()) is not None:
            await channel.close()

    async def _unary(
        self,
        method: aio.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
    ) -> Response:
        attempts = self._settings.attempts(timeout)
        while True:
            try:
                return await method(request, timeout=attempts.remaining(), metadata=self._settings.metadata)
            except aio.AioRpcError as exc:
                delay = attempts.delay_before_retry(exc)
                if delay is None:
                    raise error_from(exc) from None
            await asyncio.sleep(delay)

    async def get_raw(self, key: str, *, timeout: float | None = None) -> bytes | None:
        """The stored JSON text, or None when the key is absent."""
        reply = await self._unary(self._stub.Get, kv_pb2.GetRequest(key=key), timeout)
        return reply.value if reply.found else None

    async def get(self, key: str, *, timeout: float | None = None) -> Any:
        """The stored document, decoded (None for a stored null); raises KeyNotFound when absent."""
        raw = await self.get_raw(key, timeout=timeout)
        if raw is None:
            raise KeyNotFound(key)
        return json.loads(raw)

    async def set_raw(self, key: str, value: bytes, *, timeout: float | None = None) -> None:
        """Store value, which must be the UTF-8 text of one JSON document (the proxy checks)."""
        await self._unary(self._stub.Set, kv_pb2.SetRequest(key=key, value=value), timeout)

    async def set(self, key: str, value: Any, *, timeout: float | None = None) -> None:
        """Store value encoded as JSON; raises ValueError or TypeError when it cannot be encoded."""
        await self.set_raw(key, encode(value), timeout=timeout)

    async def has(self, key: str, *, timeout: float | None = None) -> bool:
        """True when the key is stored (also when it holds null)."""
        reply = await self._unary(self._stub.Has, kv_pb2.HasRequest(key=key), timeout)
        return reply.found

    async def delete(self, key: str, *, timeout: float | None = None) -> bool:
        """Remove the key; True when it existed (see the module docstring about retries)."""
        reply = await self._unary(self._stub.Delete, kv_pb2.DeleteRequest(key=key), timeout)
        return reply.existed

    async def keys(self, prefix: str = "", *, timeout: float | None = None) -> AsyncGenerator[str, None]:
        """Every key starting with prefix, streamed page by page; the deadline covers the whole stream.

        A caller that stops early should `aclose()` the generator (or use contextlib.aclosing), which
        cancels the stream at once rather than when the generator is collected.
        """
        attempts = self._settings.attempts(timeout)
        request = kv_pb2.KeysRequest(prefix=prefix)
        while True:
            call = self._stub.Keys(request, timeout=attempts.remaining(), metadata=self._settings.metadata)
            paged = False
            try:
                async for page in call:
                    paged = True
                    for key in page.keys:
                        yield key
                return
            except aio.AioRpcError as exc:
                # Once a page is out, a fresh stream would repeat its keys: only retry before that.
                delay = None if paged else attempts.delay_before_retry(exc)
                if delay is None:
                    raise error_from(exc) from None
            finally:
                # A caller that stops early must not leave the stream open on the server.
                call.cancel()
            await asyncio.sleep(delay)


class SyncClient(_Client[grpc.Channel]):
    """KeyValue over a plain grpc channel. Use as `with SyncClient("host:port") as kv:`.

    Same arguments and methods as AsyncClient, blocking.
    """

    def __init__(
        self,
        target: str,
        *,
        user: str | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        channel: grpc.Channel | None = None,
        tls: TlsSettings | grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        open_channel = _opener(tls, channel, grpc.insecure_channel, grpc.secure_channel)
        super().__init__(target, open_channel, channel, user, timeout, retry, token)
        self._stub = kv_pb2_grpc.KeyValueStub(self._channel)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if (channel := self._channel_to_close()) is not None:
            channel.close()

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
    ) -> Response:
        attempts = self._settings.attempts(timeout)
        while True:
            try:
                return method(request, timeout=attempts.remaining(), metadata=self._settings.metadata)
            except grpc.RpcError as exc:
                delay = attempts.delay_before_retry(exc)
                if delay is None:
                    raise error_from(exc) from None
            time.sleep(delay)

    def get_raw(self, key: str, *, timeout: float | None = None) -> bytes | None:
        """The stored JSON text, or None when the key is absent."""
        reply = self._unary(self._stub.Get, kv_pb2.GetRequest(key=key), timeout)
        return reply.value if reply.found else None

    def get(self, key: str, *, timeout: float | None = None) -> Any:
        """The stored document, decoded (None for a stored null); raises KeyNotFound when absent."""
        raw = self.get_raw(key, timeout=timeout)
        if raw is None:
            raise KeyNotFound(key)
        return json.loads(raw)

    def set_raw(self, key: str, value: bytes, *, timeout: float | None = None) -> None:
        """Store value, which must be the UTF-8 text of one JSON document (the proxy checks)."""
        self._unary(self._stub.Set, kv_pb2.SetRequest(key=key, value=value), timeout)

    def set(self, key: str, value: Any, *, timeout: float | None = None) -> None:
        """Store value encoded as JSON; raises ValueError or TypeError when it cannot be encoded."""
        self.set_raw(key, encode(value), timeout=timeout)

    def has(self, key: str, *, timeout: float | None = None) -> bool:
        """True when the key is stored (also when it holds null)."""
        return self._unary(self._stub.Has, kv_pb2.HasRequest(key=key), timeout).found

    def delete(self, key: str, *, timeout: float | None = None) -> bool:
        """Remove the key; True when it existed (see the module docstring about retries)."""
        return self._unary(self._stub.Delete, kv_pb2.DeleteRequest(key=key), timeout).existed

    def keys(self, prefix: str = "", *, timeout: float | None = None) -> Generator[str, None, None]:
        """Every key starting with prefix, streamed page by page; the deadline covers the whole stream.

        `close()` on the generator cancels the stream when the caller stops early.
        """
        attempts = self._settings.attempts(timeout)
        request = kv_pb2.KeysRequest(prefix=prefix)
        while True:
            call = self._stub.Keys(request, timeout=attempts.remaining(), metadata=self._settings.metadata)
            paged = False
            try:
                for page in call:
                    paged = True
                    yield from page.keys
                return
            except grpc.RpcError as exc:
                delay = None if paged else attempts.delay_before_retry(exc)
                if delay is None:
                    raise error_from(exc) from None
            finally:
                call.cancel()
            time.sleep(delay)
