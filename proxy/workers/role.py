"""Who a `turnout serve` process is when it is one of N workers (see proxy.workers.supervisor).

The supervisor hands each worker its WorkerRole through the environment; a process without one is a
lone proxy, worker 0 of 1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from proxy.backends import SHARED_BY_PROCESSES
from proxy.backends.registry import store_type
from proxy.config import Config
from proxy.errors import TurnoutError
from proxy.statedir import read_address, worker_dir

#: The environment variable that makes `turnout serve` a worker, holding its WorkerRole as JSON.
ROLE_ENV = "TURNOUT_WORKER"
MAX_WORKERS = 64


class CannotSupervise(TurnoutError):
    """The config or the machine does not allow N workers; the message says why."""


@dataclass(frozen=True)
class WorkerRole:
    """What the supervisor tells one worker through ROLE_ENV."""

    index: int
    count: int
    listen: str  # the reserved address, its port already chosen
    lifeline_fd: int  # end-of-file here: the supervisor is gone
    ready_fd: int  # the worker writes "<index> <pid>" here once it serves
    store_locks: tuple[str, ...]  # lock files the supervisor holds for its workers

    def to_env(self) -> str:
        return json.dumps({"index": self.index, "count": self.count, "listen": self.listen,
                           "lifeline_fd": self.lifeline_fd, "ready_fd": self.ready_fd,
                           "store_locks": list(self.store_locks)})

    @classmethod
    def from_env(cls) -> WorkerRole | None:
        raw = os.environ.get(ROLE_ENV)
        if not raw:
            return None
        doc = json.loads(raw)
        return cls(index=int(doc["index"]), count=int(doc["count"]), listen=str(doc["listen"]),
                   lifeline_fd=int(doc["lifeline_fd"]), ready_fd=int(doc["ready_fd"]),
                   store_locks=tuple(str(p) for p in doc["store_locks"]))

    def say_ready(self) -> None:
        os.write(self.ready_fd, f"{self.index} {os.getpid()}\n".encode())


def peer_addresses(state_dir: Path, count: int, address_file: str) -> list[tuple[int, str]]:
    """(index, address) of workers 1..count-1 as each last wrote it in address_file (ADMIN_ADDRESS_FILE,
    HTTP_ADDRESS_FILE) of its own folder; "" while it has not yet."""
    return [(index, read_address(worker_dir(state_dir, index), address_file) or "") for index in range(1, count)]


def check_shareable(config: Config, count: int) -> None:
    """Refuse N workers unless both stores are of types several processes may serve (the registry says)."""
    if not 1 <= count <= MAX_WORKERS:
        raise CannotSupervise(f"--workers: must be 1 to {MAX_WORKERS}, got {count}")
    if count == 1:
        return
    for name, spec in (("old", config.old), ("new", config.new)):
        if not store_type(spec.type).shared_by_processes:
            raise CannotSupervise(
                f"--workers {count}: backends.{name} is a {spec.type} store, which one process alone can serve "
                f"(several processes can share: {', '.join(SHARED_BY_PROCESSES)}); use --workers 1"
            )


