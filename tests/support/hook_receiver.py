"""A real webhook receiver for the hooks' tests: an aiohttp server on 127.0.0.1 that records each POST.

`/refuse` answers 500 (a confirm hook saying no); `/hang` answers nothing until the receiver closes
(a hook past its timeout); any other path answers 204.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any

from aiohttp import web

REFUSAL = "not now: payments freeze until 18:00"


@dataclass(frozen=True)
class Received:
    path: str
    query: str
    content_type: str
    body: dict[str, Any]


class HookReceiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.port = 0
        self._release = asyncio.Event()
        #: Set once the first POST has arrived.
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> HookReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._take)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    def url(self, path: str = "/events", query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    def events(self, path: str = "/events") -> list[str]:
        return [r.body["event"] for r in self.received if r.path == path]

    async def _take(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, request.query_string, request.headers.get("content-type", ""),
                                      json.loads(await request.read())))
        self.arrived.set()
        if request.path == "/refuse":
            return web.Response(status=500, text=REFUSAL)
        if request.path == "/hang":
            await self._release.wait()
        return web.Response(status=204)

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed): a connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
