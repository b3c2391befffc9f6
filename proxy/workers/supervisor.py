"""`turnout serve --workers N`: N proxy processes answering on one port, for stores processes can share.

One Python process is one core. To use more, the supervisor (this module) starts N workers, each a
whole proxy (dispatcher, flag watcher, replayer) that listens on the same address with SO_REUSEPORT,
so the kernel spreads connections over them; a gRPC channel is one connection, so each caller stays
with one worker. What makes N processes one proxy:

- the stores: only types whose every write is one atomic step of the store, with nothing cached in
  a process (the table in proxy.backends.registry says which), and the supervisor prepares them and
  holds their locks for all its workers, so no other turnout process (a second proxy, an offline
  migrate) writes them meanwhile;
- one writer per key at a time across workers (proxy.data.sharedlocks), and one replication queue in
  state_dir that every worker records in and replays from;
- the operators' API: worker 0 listens on admin.listen and speaks for the others (proxy.workers.relay);
  every worker publishes its own admin address under state_dir/workers/<index>/.

The supervisor reserves the listen address before any worker starts (so `:0` means one port for all
and a port in use is refused up front), restarts a worker that dies, and on SIGTERM lets every
worker drain as a lone proxy would. A worker whose supervisor is gone (SIGKILL) stops by itself: it
holds the read end of a pipe only the supervisor writes to, and end-of-file there means stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from proxy import statedir
from proxy.backends import prepare_store, shared_lock_path
from proxy.config import Config
from proxy.durable import StoreLock
from proxy.serving.app import announce
from proxy.statedir import LISTEN_ADDRESS_FILE, queue_store
from proxy.workers.role import ROLE_ENV, CannotSupervise, WorkerRole, check_shareable

log = logging.getLogger(__name__)

#: How long all workers may take to say they serve, at start.
START_TIMEOUT_S = 60.0
#: How long a stopping worker may take (in-flight calls, then the queue's drain) before SIGKILL.
STOP_TIMEOUT_S = 30.0
#: Pause before restarting a worker that died: first, then doubled while it keeps dying young.
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
#: A worker that lived this long is healthy again: its next restart waits RESTART_FIRST_S.
HEALTHY_AFTER_S = 30.0

def reserve_listen(listen: str) -> tuple[socket.socket, str]:
    """Bind listen with SO_REUSEPORT (not listening), so every worker gets the same, free port."""
    host, _, port = listen.rpartition(":")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        reserved = socket.socket(family, kind, proto)
    except (OSError, ValueError) as exc:
        raise CannotSupervise(f"listen: {listen} is not an address here: {exc}") from None
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind(address)
    except OSError as exc:
        reserved.close()
        raise CannotSupervise(f"listen: cannot listen on {listen} ({exc.strerror or exc})") from None
    return reserved, f"{host}:{reserved.getsockname()[1]}"


def hold_store_locks(config: Config) -> list[StoreLock]:
    """Lock both stores and the replication queue for this proxy's workers, or refuse to start."""
    specs = (config.old, config.new, queue_store(config.state_dir))
    paths = [path for spec in specs if (path := shared_lock_path(spec)) is not None]
    held: list[StoreLock] = []
    try:
        for path in paths:
            held.append(StoreLock(path, f"the store behind {path.name}"))
    except BaseException:
        for lock in held:
            lock.release()
        raise
    return held


async def prepare_stores(config: Config) -> None:
    """Create what the workers would otherwise race to create (SQLite files in WAL mode, say)."""
    for spec in (config.old, config.new, queue_store(config.state_dir)):
        await prepare_store(spec)


@contextlib.contextmanager
def _pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    try:
        yield read_end, write_end
    finally:
        for fd in (read_end, write_end):
            with contextlib.suppress(OSError):
                os.close(fd)


class Supervisor:
    def __init__(self, config: Config, config_file: Path, count: int, log_level: str) -> None:
        self.config = config
        self.config_file = config_file
        self.count = count
        self.log_level = log_level
        self._workers: dict[int, asyncio.subprocess.Process] = {}
        self._ready: dict[int, asyncio.Event] = {i: asyncio.Event() for i in range(count)}
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        config = self.config
        statedir.make_private_dir(config.state_dir)
        with contextlib.ExitStack() as held:
            locks = hold_store_locks(config)
            for lock in locks:
                held.callback(lock.release)
            await prepare_stores(config)
            reserved, address = reserve_listen(config.listen)
            held.callback(reserved.close)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stopping.set)
            lifeline, _ = held.enter_context(_pipe())
            ready_in, ready_out = held.enter_context(_pipe())
            loop.add_reader(ready_in, self._read_ready, ready_in)
            held.callback(loop.remove_reader, ready_in)
            fds = (lifeline, ready_out, *(lock.fileno() for lock in locks))

            def role(index: int) -> WorkerRole:
                return WorkerRole(index, self.count, address, lifeline, ready_out,
                                  tuple(str(lock.path) for lock in locks))

            try:
                return await self._serve(address, role, fds)
            finally:
                await self._stop_all()

    async def _serve(self, address: str, role: Callable[[int], WorkerRole], fds: tuple[int, ...]) -> int:
        for index in range(self.count):
            await self._start(role(index), fds)
        failed = await self._wait_ready()
        if failed is not None:
            return failed
        statedir.write_address(self.config.state_dir, LISTEN_ADDRESS_FILE, address)
        announce(f"serving on {address} ({self.count} workers, old={self.config.old.type}, "
                 f"new={self.config.new.type})")
        restarts = {index: RESTART_FIRST_S for index in range(self.count)}
        started = {index: time.monotonic() for index in range(self.count)}
        while not self._stopping.is_set():
            exited = await self._next_exit()
            if exited is None:
                break
            index, code = exited
            if self._stopping.is_set():
                break
            if time.monotonic() - started[index] > HEALTHY_AFTER_S:
                restarts[index] = RESTART_FIRST_S
            log.error("worker %d exited with %s; restarting it in %.1fs", index, code, restarts[index])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), restarts[index])
            if self._stopping.is_set():
                break
            restarts[index] = min(RESTART_MAX_S, restarts[index] * 2)
            started[index] = time.monotonic()
            await self._start(role(index), fds)
        return 0

    async def _start(self, role: WorkerRole, fds: tuple[int, ...]) -> None:
        self._ready[role.index].clear()
        command = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(self.config_file),
                   "--log-level", self.log_level]
        self._workers[role.index] = await asyncio.create_subprocess_exec(
            *command, env={**os.environ, ROLE_ENV: role.to_env()}, pass_fds=fds)

    def _read_ready(self, fd: int) -> None:
        for line in os.read(fd, 4096).decode().splitlines():
            index = int(line.split()[0])
            if index in self._ready:
                self._ready[index].set()

    async def _all_ready(self) -> None:
        for event in self._ready.values():
            await event.wait()

    async def _wait_ready(self) -> int | None:
        """None once every worker serves; else the exit status to leave with (one died, or a signal)."""
        all_ready: asyncio.Future[Any] = asyncio.ensure_future(self._all_ready())
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        waiters = [all_ready, stop, *(asyncio.ensure_future(process.wait()) for process in self._workers.values())]
        try:
            done, _ = await asyncio.wait(waiters, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if all_ready in done:
            return None
        if stop in done:
            return 0
        for index, process in self._workers.items():
            if process.returncode is not None:
                log.error("worker %d exited with %s before it served; stopping", index, process.returncode)
                return process.returncode if process.returncode > 0 else 2
        log.error("the workers did not all serve within %.0fs; stopping", START_TIMEOUT_S)
        return 2

    async def _next_exit(self) -> tuple[int, int] | None:
        """The next worker to exit, with its status; None once the supervisor is asked to stop."""
        waits = {asyncio.ensure_future(process.wait()): index for index, process in self._workers.items()}
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait([stop, *waits], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (stop, *waits):
                waiter.cancel()
        for waiter in done:
            if waiter in waits:
                return waits[waiter], waiter.result()
        return None

    async def _stop_all(self) -> None:
        running = [p for p in self._workers.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if running:
            _, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running], timeout=STOP_TIMEOUT_S)
            if late:
                log.error("%d workers did not stop within %.0fs; killing them", len(late), STOP_TIMEOUT_S)
                for process in running:
                    if process.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            process.kill()
                        await process.wait()


def supervise(config: Config, config_file: Path, count: int, log_level: str) -> int:
    import uvloop

    check_shareable(config, count)
    code = uvloop.run(Supervisor(config, config_file, count, log_level).run())
    announce("stopped")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    return code
