"""One proxy process's operators' side, as proxy/serving/app.py wires it: an AdminState over a real
data plane on memory stores (the new one can be switched to failing) and its aiohttp HTTP side on a
loopback port, opened the way start-up opens it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from proxy.admin.http import HttpSide
from proxy.admin.state import AdminState
from proxy.backends.memory import MemoryBackend
from proxy.data.discrepancies import DiscrepancyLog
from proxy.data.dispatcher import Dispatcher
from proxy.data.keylocks import KeyLocks
from proxy.data.plane import DataPlane
from proxy.replication.local import ReplicationQueue
from proxy.routing.router import Route
from proxy.routing.watcher import FlagWatcher
from proxy.telemetry.tracing import Telemetry
from tests.support.faults import SwitchableBackend

FLAGS = "revision: r1\nuse_new_storage: true\nshadow_mode_enabled: true\n"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content_type: str
    body: str


@dataclass
class Side:
    state: AdminState
    dispatcher: Dispatcher
    new: SwitchableBackend
    address: str

    def open(self) -> None:
        """What start-up does once both backends are open: the plane is handed over, then it serves."""
        self.state.plane = DataPlane(self.dispatcher, self.state.watcher)
        self.state.serving = True

    async def get(self, path: str) -> Reply:
        async with aiohttp.ClientSession() as session, session.get(f"http://{self.address}{path}") as reply:
            return Reply(reply.status, reply.headers["Content-Type"], await reply.text())


@pytest.fixture
async def side(tmp_path: Path) -> AsyncIterator[Side]:
    """The HTTP side of a proxy whose backends are not open yet (call `open()`)."""
    (tmp_path / "flags.yaml").write_text(FLAGS)
    watcher = FlagWatcher(tmp_path / "flags.yaml", tmp_path)
    watcher.load_initial()
    old, new = MemoryBackend(), SwitchableBackend(MemoryBackend())
    locks = KeyLocks()
    queue = ReplicationQueue(MemoryBackend(), {"old": old, "new": new}, locks)
    dispatcher = Dispatcher({Route.OLD: old, Route.NEW: new}, watcher, queue, locks, DiscrepancyLog(tmp_path))
    state = AdminState(watcher=watcher, plane=None, started=time.time(), state_dir=tmp_path,
                       telemetry=Telemetry(enabled=False))
    http = HttpSide(state)
    port = await http.start("127.0.0.1", 0)
    try:
        yield Side(state, dispatcher, new, f"127.0.0.1:{port}")
    finally:
        await http.stop()
        await queue.stop()
