"""The lifecycle of a running proxy: open the backends, serve, and shut down without losing a write.

Start-up registers every service first (health says NOT_SERVING), then opens the backends, then
says SERVING, so probes and callers see a clear state at every moment. SIGTERM or SIGINT stops
accepting calls, lets in-flight calls finish, lets the replication queue drain (what it cannot
copy stays durable for the next start) and closes the backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path

from grpc_health.v1 import health

from proxy import statedir
from proxy.admin.auth import read_token
from proxy.admin.http import HttpSide
from proxy.admin.safety import readings
from proxy.admin.service import build_admin_server
from proxy.admin.state import AdminState
from proxy.admin.steering import ProxySteering
from proxy.backends import open_backend
from proxy.backends.base import Backend
from proxy.collector import settle_garbage_collector
from proxy.config import BackendSpec, Config, Limits
from proxy.data.discrepancies import DiscrepancyLog
from proxy.data.dispatcher import Dispatcher
from proxy.data.keylocks import KeyLocks
from proxy.data.plane import DataPlane
from proxy.data.prober import HealthProber
from proxy.data.sharedlocks import SharedKeyLocks
from proxy.durable import inherit_store_locks
from proxy.errors import ConfigError, TurnoutError
from proxy.replication.local import ReplicationQueue
from proxy.replication.queue import IntentQueue
from proxy.replication.shared import SharedReplicationQueue
from proxy.routing.router import Route
from proxy.routing.watcher import FlagWatcher
from proxy.safety import canary
from proxy.safety.guard import Guard
from proxy.safety.history import History
from proxy.safety.hooks import Hooks
from proxy.serving.kvservice import KeyValueService
from proxy.serving.server import build_server, set_serving
from proxy.serving.tls import server_credentials
from proxy.statedir import ADMIN_ADDRESS_FILE, LISTEN_ADDRESS_FILE, queue_store, worker_dir
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.tracing import Telemetry
from proxy.workers.role import WorkerRole, peer_addresses

log = logging.getLogger(__name__)

#: How long in-flight calls may take to finish after SIGTERM.
SHUTDOWN_GRACE_S = 10.0
#: How long shutdown waits for the replication queue to drain before leaving the rest for next start.
DRAIN_ON_SHUTDOWN_S = 10.0

class CannotListen(TurnoutError):
    """An address of the config cannot be listened on; the message names the field."""


def announce(message: str) -> None:
    """A line on stderr that tests and operators read (the listen addresses may ask for port 0)."""
    print(f"turnout: {message}", file=sys.stderr, flush=True)


class Proxy:
    def __init__(self, config: Config, role: WorkerRole | None = None) -> None:
        self.config = config
        self.role = role
        self.dispatcher: Dispatcher | None = None
        self.stopping = asyncio.Event()
        self._opened: list[Backend] = []

    async def run(self) -> None:
        config, role = self.config, self.role
        statedir.make_private_dir(config.state_dir)
        listen = config.listen if role is None else role.listen
        own_dir = config.state_dir if role is None else worker_dir(config.state_dir, role.index)
        statedir.make_private_dir(own_dir)
        if role is not None:
            inherit_store_locks(Path(path) for path in role.store_locks)
        # Worker 0 answers on admin.listen (and admin.http); the other workers' are for worker 0 to reach.
        first = role is None or role.index == 0
        admin_listen = config.admin_listen if first else "127.0.0.1:0"
        http_listen = None if config.admin_http is None else config.admin_http if first else "127.0.0.1:0"
        watcher = FlagWatcher(config.flags, config.state_dir)
        await asyncio.to_thread(watcher.load_initial)

        telemetry = Telemetry.from_env(config.record_keys)
        health_servicer = health.aio.HealthServicer()
        await set_serving(health_servicer, False)
        service = KeyValueService(lambda: self.dispatcher, config.max_value_bytes, telemetry)
        server = build_server(service, health_servicer, config.max_value_bytes, reuse_port=role is not None,
                              limits=config.limits)
        admin_token = None if config.admin_token_file is None else read_token(config.admin_token_file)
        admin_state = AdminState(watcher=watcher, plane=None, started=time.time(), state_dir=config.state_dir,
                                 telemetry=telemetry, admin_token=admin_token, hooks=Hooks(config.hooks))
        if role is not None:
            admin_state.worker = role.index
            if role.index == 0:
                count = role.count
                admin_state.peers = lambda: peer_addresses(config.state_dir, count, ADMIN_ADDRESS_FILE)
                admin_state.http_peers = lambda: peer_addresses(config.state_dir, count, statedir.HTTP_ADDRESS_FILE)
        admin = build_admin_server(admin_state, config.limits)
        http = None if http_listen is None else HttpSide(admin_state, config.limits)
        queue: IntentQueue | None = None
        prober: HealthProber | None = None
        guard: Guard | None = None
        discrepancies = DiscrepancyLog(own_dir, record_values=config.record_values)
        locks = KeyLocks() if role is None else SharedKeyLocks(config.state_dir)
        try:
            try:
                port = (server.add_insecure_port(listen) if config.tls is None
                        else server.add_secure_port(listen, server_credentials(config.tls)))
            except RuntimeError:
                message = f"listen: cannot listen on {listen} (in use, or not an address here)"
                raise CannotListen(message) from None
            try:
                admin_port = admin.add_insecure_port(admin_listen)
            except RuntimeError:
                message = f"admin.listen: cannot listen on {admin_listen} (in use, or not an address here)"
                raise CannotListen(message) from None
            await server.start()
            await admin.start()
            admin_address = f"{admin_listen.rpartition(':')[0]}:{admin_port}"
            statedir.write_address(own_dir, ADMIN_ADDRESS_FILE, admin_address)
            operators = f"admin on {admin_address}"
            if http is None or http_listen is None:
                statedir.remove(own_dir / statedir.HTTP_ADDRESS_FILE)  # a previous run's: nothing listens there now
            else:
                operators += f", http on {await self._start_http(http, http_listen, own_dir)}"
            self._install_signal_handlers()
            old = await self._open(config.old)
            new = await self._open(config.new)
            store = await open_backend(queue_store(config.state_dir))
            self._opened.append(store)
            backends = {Route.OLD: old, Route.NEW: new}
            stores = {route.value: b for route, b in backends.items()}
            # One process's memory is the truth of what is pending; under --workers N the shared store is.
            queue = (ReplicationQueue(store, stores, locks) if role is None
                     else SharedReplicationQueue(store, stores, locks))
            left = await queue.load()
            if left:
                log.info("replaying %d writes a previous run left in the replication queue", left)
            queue.start()
            discrepancies.start()
            self.dispatcher = Dispatcher(backends, watcher, queue, locks, discrepancies, Metrics(), telemetry)
            admin_state.plane = DataPlane(self.dispatcher, watcher)
            prober = HealthProber(backends, self.dispatcher.health)
            prober.start()
            plane = admin_state.plane
            if first:
                # One guard per proxy: it reads every worker's counters and steers them all.
                guard = Guard(watcher, lambda: readings(admin_state), ProxySteering(admin_state), config.state_dir,
                              admin_state.hooks, plane.drain,
                              history=History(lambda: plane.snapshot().replication))
                guard.restore_canary()
                admin_state.guard = guard
                guard.start()
            else:
                restore_canary_step(watcher, config.state_dir)
            watcher.start()
            # Only now, with both backends open, do probes and callers hear that the proxy serves.
            await set_serving(health_servicer, True)
            admin_state.serving = True
            address = f"{listen.rpartition(':')[0]}:{port}"
            if role is None:
                statedir.write_address(config.state_dir, LISTEN_ADDRESS_FILE, address)
                announce(operators)
                announce(f"serving on {address} (old={old.type_name}, new={new.type_name})")
            else:
                self._follow_supervisor(role.lifeline_fd)
                role.say_ready()
                if role.index == 0:
                    announce(operators)
                log.info("worker %d of %d serving on %s (pid %d)", role.index, role.count, address, os.getpid())
            settle_garbage_collector()
            await self.stopping.wait()
            log.info("shutting down: letting in-flight calls finish")
            admin_state.serving = False
            await set_serving(health_servicer, False)
            await server.stop(SHUTDOWN_GRACE_S)
        finally:
            await server.stop(0)
            if prober is not None:
                await prober.stop()
            if guard is not None:
                await guard.stop()
            await admin_state.hooks.close()
            await watcher.stop()
            await self._close(queue)
            await discrepancies.stop()
            if http is not None:
                await http.stop()
            await admin.stop(0)
            telemetry.shutdown()
            if isinstance(locks, SharedKeyLocks):
                locks.close()
        if role is None:
            announce("stopped")  # the supervisor says it once for all its workers

    async def _start_http(self, http: HttpSide, listen: str, own_dir: Path) -> str:
        """Listen on `listen` (admin.http, or any free port for a worker other than 0) and write down
        the address taken."""
        host, _, port = listen.rpartition(":")
        try:
            address = f"{host}:{await http.start(host, int(port))}"
        except OSError as exc:
            raise CannotListen(f"admin.http: cannot listen on {listen}: {exc.strerror or exc}") from None
        statedir.write_address(own_dir, statedir.HTTP_ADDRESS_FILE, address)
        return address

    async def _open(self, spec: BackendSpec) -> Backend:
        backend = await open_backend(spec)
        self._opened.append(backend)
        return backend

    async def _close(self, queue: IntentQueue | None) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if queue is not None:
            if not await queue.drain(DRAIN_ON_SHUTDOWN_S):
                log.warning("%d writes still to replicate; they are kept for the next start", queue.stats().depth)
            await queue.stop()
        for backend in reversed(self._opened):
            try:
                await backend.close()
            except Exception:
                log.exception("closing the %s backend failed", backend.type_name)

    def _follow_supervisor(self, lifeline_fd: int) -> None:
        """Stop when the supervisor is gone: the lifeline pipe's only writer closes when it dies."""
        loop = asyncio.get_running_loop()

        def readable() -> None:
            if not os.read(lifeline_fd, 64):
                loop.remove_reader(lifeline_fd)
                log.warning("the supervisor is gone; stopping")
                self.stopping.set()

        loop.add_reader(lifeline_fd, readable)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)


def restore_canary_step(watcher: FlagWatcher, state_dir: Path) -> None:
    """A worker other than 0 starts on the canary's step in state_dir (worker 0's guard then tells it
    of every step after)."""
    plan = watcher.file_flags.canary
    if plan is not None:
        watcher.set_canary_step(canary.load(state_dir, plan, time.time()).step)


#: Descriptors kept out of every connection limit: the stores and their journals, state_dir's files,
#: the log, the event loop's and gRPC's own, threads' pipes, and a health probe or an admin call
#: that arrives while both ports are full.
RESERVED_DESCRIPTORS = 128
#: The soft limit asked for when the hard one is unlimited (the kernel's nr_open caps it anyway).
UNLIMITED_NOFILE_TARGET = 1 << 20


def fit_descriptors(limits: Limits) -> int:
    """Raise this process's soft RLIMIT_NOFILE toward its hard one and check that the limits fit in it.

    The data port, the admin API and the HTTP side each stop at their own limit, so together they
    never take the descriptors the stores, health and admin need; a config whose limits cannot fit
    would let a flood of connections starve writes, so it is refused before anything starts.
    Returns the descriptors the process may now have.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, UNLIMITED_NOFILE_TARGET)
        with contextlib.suppress(ValueError, OSError):  # a container may forbid it: keep what we have
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    needed = limits.max_connections + 2 * limits.admin_max_connections + RESERVED_DESCRIPTORS
    if needed > soft:
        room = max(soft - 2 * limits.admin_max_connections - RESERVED_DESCRIPTORS, 0)
        raise ConfigError(
            f"limits.max_connections: {limits.max_connections} data connections, 2 x "
            f"limits.admin_max_connections ({limits.admin_max_connections}) and {RESERVED_DESCRIPTORS} "
            f"descriptors kept for the stores, health and admin need {needed} open files, but this "
            f"process may have {soft} (RLIMIT_NOFILE); lower limits.max_connections to at most {room} "
            "or raise the limit (ulimit -n)")
    return soft



def serve(config: Config) -> None:
    import uvloop

    fit_descriptors(config.limits)

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(Proxy(config, WorkerRole.from_env()).run())
    # Shut down already: every write is flushed and the stores are closed. A late second SIGTERM
    # (a supervisor repeating itself) must not turn the clean exit into "killed by signal".
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
