"""The HTTP side of the operators' endpoint (`admin.http`), on aiohttp: /metrics for Prometheus, the
dashboard and the /dashboard.json it polls, /healthz for probes, /status.json and /discrepancies.json.

It starts before the backends are opened, so a probe hears "not serving yet" rather than nothing,
and a scrape during start-up still sees the flag families.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import CollectorRegistry

from proxy.admin.auth import AUTHORIZATION, refusal
from proxy.admin.connections import ConnectionCap
from proxy.admin.dashboard import DASHBOARD
from proxy.admin.dashboardview import dashboard_document
from proxy.admin.documents import status_document
from proxy.admin.metrics import metrics_page, proxy_registry
from proxy.admin.state import AdminState
from proxy.admin.status import proxy_status
from proxy.config import Limits
from proxy.data.discrepancies import records_of

_NOT_FOUND = "not found: try /metrics, /healthz, /status.json, /discrepancies.json, /dashboard.json or /\n"
_STATE_KEY = web.AppKey("state", AdminState)
_REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


def build_http_app(state: AdminState) -> web.Application:
    # With a token, every page asks for it, /metrics and /healthz included (contract §5).
    app = web.Application(middlewares=[] if state.admin_token is None else [require_token(state.admin_token)])
    app[_STATE_KEY] = state
    app[_REGISTRY_KEY] = proxy_registry(state)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status.json", status_json)
    app.router.add_get("/discrepancies.json", discrepancies_json)
    app.router.add_get("/dashboard.json", dashboard_json)
    app.router.add_get("/", dashboard)
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/{anything:.*}", not_found)  # last: the routes above match first
    return app


def require_token(token: str) -> Middleware:
    """A middleware answering 401 (WWW-Authenticate: Bearer) to a request without the token, before its page runs."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        why = refusal(request.headers.get(AUTHORIZATION), token)
        if why is not None:
            return web.Response(text=f"{why}\n", status=401, content_type="text/plain",
                                headers={"WWW-Authenticate": 'Bearer realm="turnout"'})
        return await handler(request)

    return check


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus page; `?records=1` adds each backend's record count and checksum (scans both)."""
    body = await metrics_page(request.app[_STATE_KEY], request.app[_REGISTRY_KEY],
                              with_records=request.query.get("records") == "1")
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


async def healthz(request: web.Request) -> web.Response:
    """200 once the backends are open and the proxy serves; 503 while it starts or stops, saying which."""
    state = request.app[_STATE_KEY]
    if state.healthy():
        return _json({"status": "serving"}, 200)
    if state.plane is None:
        return _json({"status": "starting", "reason": "the backends are not open yet"}, 503)
    return _json({"status": "stopping", "reason": "shutting down: no new calls are taken"}, 503)


async def status_json(request: web.Request) -> web.Response:
    return _json(status_document(await proxy_status(request.app[_STATE_KEY])), 200)


async def discrepancies_json(request: web.Request) -> web.Response:
    """This process's report; with `?key=K`, K's triage records from every worker's log (what
    `turnout discrepancies show K --json` prints)."""
    key = request.query.get("key")
    if key is not None:
        state_dir = request.app[_STATE_KEY].state_dir
        records = await asyncio.to_thread(records_of, state_dir, key)  # the log is read whole: off the loop
        return _json({"key": key, "count": len(records), "records": [asdict(d) for d in records]}, 200)
    plane = request.app[_STATE_KEY].plane
    return _json(plane.snapshot().discrepancies.to_document() if plane is not None else {}, 200)


async def dashboard_json(request: web.Request) -> web.Response:
    """What the dashboard polls (proxy.admin.dashboardview)."""
    return _json(await dashboard_document(request.app[_STATE_KEY]), 200)


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(text=DASHBOARD, content_type="text/html", charset="utf-8")


async def not_found(request: web.Request) -> web.Response:
    return web.Response(text=_NOT_FOUND, status=404, content_type="text/plain")


def _json(doc: object, status: int) -> web.Response:
    return web.Response(text=json.dumps(doc), status=status, content_type="application/json")


class HttpSide:
    """The HTTP side of one proxy process, listening once started.

    At most limits.admin_max_connections connections at once (the rest hear 503 and are closed), and a
    connection that has not sent a whole request within limits.idle_timeout_s of its start or of its
    last answer is closed, so neither many clients nor one dribbling a byte at a time hold it open.
    """

    def __init__(self, state: AdminState, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        # No access log: Prometheus and probes call every few seconds, which would drown the log.
        # aiohttp's keep-alive timer runs from the connection's start and is only pushed back by a
        # finished request, so it is also the deadline for a request's headers.
        self._runner = web.AppRunner(build_http_app(state), access_log=None,
                                     keepalive_timeout=self._limits.idle_timeout_s)
        self._listener: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (port 0: any free one) and return the port taken; OSError if it cannot."""
        await self._runner.setup()
        assert self._runner.server is not None
        cap = ConnectionCap(self._runner.server, self._limits.admin_max_connections)
        self._listener = await asyncio.get_running_loop().create_server(cap, host.strip("[]"), port)
        return int(self._listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        await self._runner.cleanup()
