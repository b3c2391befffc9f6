"""ConnectionCap (proxy/admin/connections.py): connections past the cap hear 503 and are closed at once,
and a place freed by a closed connection is taken by the next one; on asyncio's loop and on uvloop,
which the proxy runs on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop

from proxy.admin.connections import ConnectionCap

TIMEOUT_S = 5.0
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
Runner = Callable[[Coroutine[Any, Any, None]], None]
RUNNERS = [pytest.param(asyncio.run, id="asyncio"), pytest.param(uvloop.run, id="uvloop")]


class Greeter(asyncio.Protocol):
    """Says hello on connection, so the client can tell a served connection from a turned-away one;
    sets `lost` when a connection ends."""

    def __init__(self, lost: asyncio.Event) -> None:
        self.lost = lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"hello\n")  # type: ignore[attr-defined]  # uvloop's are not asyncio.WriteTransport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


@asynccontextmanager
async def capped() -> AsyncIterator[tuple[asyncio.Event, int]]:
    """A loopback server serving at most two connections at once: the event a served connection's
    end sets, and its port."""
    lost = asyncio.Event()
    server = await asyncio.get_running_loop().create_server(ConnectionCap(lambda: Greeter(lost), limit=2),
                                                            "127.0.0.1", 0)
    try:
        yield lost, server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def first_line(port: int) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    line = await asyncio.wait_for(reader.readline(), TIMEOUT_S)
    return line, reader, writer


def run(runner: Runner, scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 3 * TIMEOUT_S)

    runner(bounded())


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_connection_past_the_cap_hears_503_and_is_closed(runner: Runner) -> None:
    """With two connections open, a third that sends its request gets a whole 503 naming the setting."""

    async def scenario() -> None:
        async with capped() as (_, port):
            served = [await first_line(port) for _ in range(2)]
            assert [line for line, _, _ in served] == [b"hello\n", b"hello\n"]
            line, reader, writer = await first_line(port)
            assert line.startswith(b"HTTP/1.1 503")
            rest = await asyncio.wait_for(reader.read(), TIMEOUT_S)
            assert b"limits.admin_max_connections is 2" in rest
            for _, _, open_writer in [*served, (line, reader, writer)]:
                open_writer.close()

    run(runner, scenario)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_closed_connection_gives_its_place_back(runner: Runner) -> None:
    """Once one of two open connections closes, the next connection is served."""

    async def scenario() -> None:
        async with capped() as (lost, port):
            served = [await first_line(port) for _ in range(2)]
            _, _, leaving = served.pop()
            leaving.close()
            await asyncio.wait_for(lost.wait(), TIMEOUT_S)  # the server hears of the close a loop turn later
            line, _, writer = await first_line(port)
            assert line == b"hello\n"
            writer.close()
            for _, _, open_writer in served:
                open_writer.close()

    run(runner, scenario)
