"""One admin port for two protocols: gRPC (the admin API) and plain HTTP (/metrics for Prometheus).

Every connection to `admin.listen` is told apart by its first bytes: an HTTP/2 connection preface
is gRPC and is piped to the admin gRPC server on a loopback port of its own; anything else is read
as an HTTP/1.1 request and answered here. Admin traffic is light, so piping in Python costs nothing
that matters, and operators keep the one address the contract gives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: A page handler: (path, query) -> (status, content type, body).
Page = Callable[[str, str], Awaitable[tuple[int, str, bytes]]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 500: "Internal Server Error"}


class AdminFront:
    def __init__(self, grpc_target: tuple[str, int], page: Page) -> None:
        self._grpc_target = grpc_target
        self._page = page
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(reader.read(len(HTTP2_PREFACE)), 10)
            if HTTP2_PREFACE.startswith(first[:len(HTTP2_PREFACE)]) and first:
                await self._pipe_to_grpc(first, reader, writer)
            else:
                await self._answer_http(first, reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("admin connection failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _pipe_to_grpc(self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._grpc_target)
        upstream_writer.write(first)

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            finally:
                with contextlib.suppress(Exception):
                    sink.write_eof()

        try:
            await asyncio.gather(copy(reader, upstream_writer), copy(upstream_reader, writer))
        finally:
            upstream_writer.close()

    async def _answer_http(self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = first
        while b"\r\n\r\n" not in head and len(head) < 16384:
            more = await asyncio.wait_for(reader.read(4096), 10)
            if not more:
                break
            head += more
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1"):
            status, kind, body = 400, "text/plain", b"bad request\n"
        elif parts[0] not in ("GET", "HEAD"):
            status, kind, body = 405, "text/plain", b"only GET\n"
        else:
            path, _, query = parts[1].partition("?")
            try:
                status, kind, body = await self._page(path, query)
            except Exception:
                log.exception("admin page %s failed", path)
                status, kind, body = 500, "text/plain", b"internal error\n"
        header = (f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {kind}\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        writer.write(header.encode() + (body if parts[0:1] != ["HEAD"] else b""))
        await writer.drain()
