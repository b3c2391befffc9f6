"""A cap on the connections an asyncio server keeps open at once (the HTTP side's admin_max_connections).

aiohttp takes every connection it is offered, and each holds a descriptor until its client leaves;
a client that opens many of them would take the descriptors the stores and the data port need.
`ConnectionCap` wraps the server's protocol factory: up to its limit a connection is served as
usual, past it the client hears 503 and the connection is closed at once, so it holds nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast


def too_many(limit: int) -> bytes:
    """The whole HTTP answer a connection past the cap gets before it is closed."""
    body = f"too many connections to the HTTP side (limits.admin_max_connections is {limit}); retry later\n"
    return (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body.encode())}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n" + body
    ).encode()


class ConnectionCap:
    """A protocol factory serving at most `limit` connections at once through `serve`."""

    def __init__(self, serve: Callable[[], asyncio.Protocol], limit: int) -> None:
        self._serve = serve
        self.limit = limit
        self.open = 0
        self._refusal = too_many(limit)

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limit:
            return _TurnedAway(self._refusal)
        # Counted when the protocol is made, not when the connection is: a burst of accepts is
        # handed protocols before any of their connection_made runs.
        self.open += 1
        return _Counted(self._serve(), self._release)

    def _release(self) -> None:
        self.open -= 1


#: How long a turned-away connection waits for its request before it is closed anyway.
TURN_AWAY_WAIT_S = 1.0


class _TurnedAway(asyncio.Protocol):
    """Answers 503 and closes once the client's request has been read: closed with the request still
    unread, the kernel would send a reset, and the client would see that instead of the answer."""

    def __init__(self, refusal: bytes) -> None:
        self._refusal = refusal
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not derive from asyncio's classes.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._refusal)
        self._deadline = asyncio.get_running_loop().call_later(TURN_AWAY_WAIT_S, self._close)

    def data_received(self, data: bytes) -> None:
        self._close()

    def eof_received(self) -> bool:
        self._close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._transport = None

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()  # after the buffered answer is written


class _Counted(asyncio.Protocol):
    """Passes everything to the served protocol, and gives the place back when the connection ends."""

    __slots__ = ("_inner", "_release")

    def __init__(self, inner: asyncio.Protocol, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
        self._inner.connection_lost(exc)
