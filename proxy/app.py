"""The lifecycle of a running proxy: open the backends, serve, and shut down without losing a write.

Start-up registers every service first (health says NOT_SERVING), then opens the backends, then
says SERVING, so probes and callers see a clear state at every moment. SIGTERM or SIGINT stops
accepting calls, lets in-flight calls finish, flushes the dispatcher and closes the backends.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field

from grpc_health.v1 import health

from proxy.backends import open_backend
from proxy.backends.base import Backend
from proxy.config import Config
from proxy.dispatcher import Dispatcher
from proxy.server import KeyValueService, build_server, set_serving

log = logging.getLogger(__name__)

#: How long in-flight calls may take to finish after SIGTERM.
SHUTDOWN_GRACE_S = 10.0


@dataclass
class Proxy:
    config: Config
    dispatcher: Dispatcher | None = None
    backends: list[Backend] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        health_servicer = health.aio.HealthServicer()
        await set_serving(health_servicer, False)
        service = KeyValueService(lambda: self.dispatcher, self.config.max_value_bytes)
        server = build_server(service, health_servicer, self.config.max_value_bytes)
        port = server.add_insecure_port(self.config.listen)
        if port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await server.start()
        self._install_signal_handlers()
        try:
            old = await open_backend(self.config.old)
            self.backends.append(old)
            new = await open_backend(self.config.new)
            self.backends.append(new)
            self.dispatcher = Dispatcher(old, new)
            await set_serving(health_servicer, True)
            host = self.config.listen.rpartition(":")[0]
            # Tests and operators read this line to learn the port (listen may ask for port 0).
            print(
                f"turnout: serving on {host}:{port} (old={old.type_name}, new={new.type_name})",
                file=sys.stderr,
                flush=True,
            )
            await self.stopping.wait()
            log.info("shutting down: letting in-flight calls finish")
            await set_serving(health_servicer, False)
            await server.stop(SHUTDOWN_GRACE_S)
        finally:
            await server.stop(0)
            await self._close()
        print("turnout: stopped", file=sys.stderr, flush=True)

    async def _close(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.close()
        for backend in reversed(self.backends):
            try:
                await backend.close()
            except Exception:
                log.exception("closing the %s backend failed", backend.type_name)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)


def serve(config: Config) -> None:
    import uvloop

    uvloop.run(Proxy(config).run())
