"""The dispatcher on real in-process backends: replication under the kill switch and in shadow mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proxy.backends.memory import MemoryBackend
from proxy.discrepancies import DiscrepancyLog
from proxy.dispatcher import Call, Dispatcher
from proxy.flags import Flags
from proxy.keylocks import KeyLocks
from proxy.replication import ReplicationQueue
from proxy.router import Route, Router
from tests.faults import SwitchableBackend


@dataclass
class Routes:
    router: Router


def build(tmp_path: Path, flags: Flags) -> tuple[Dispatcher, MemoryBackend, SwitchableBackend, Routes]:
    old, new = MemoryBackend(), SwitchableBackend(MemoryBackend())
    locks = KeyLocks()
    queue = ReplicationQueue(MemoryBackend(), {"old": old, "new": new}, locks)
    routes = Routes(Router(flags))
    return Dispatcher({Route.OLD: old, Route.NEW: new}, routes, queue, locks, DiscrepancyLog(tmp_path)), old, new, routes


async def test_kill_switch_leaves_new_untouched(tmp_path: Path) -> None:
    """With use_new_storage: false, a write goes to old only and nothing is queued for new."""
    dispatcher, old, new, _ = build(tmp_path, Flags(use_new_storage=False, shadow_mode_enabled=True))
    await dispatcher.set("k", b"1", Call())
    assert await old.get("k") == b"1"
    assert new.calls == 0
    assert dispatcher.queue.stats().depth == 0


async def test_a_write_under_the_kill_switch_turns_a_pending_copy_around(tmp_path: Path) -> None:
    """A copy from new still pending when the kill switch is thrown cannot overwrite the newer write to old."""
    dispatcher, old, new, routes = build(tmp_path, Flags(use_new_storage=True, write_percentage=100))
    new.down = False
    await dispatcher.set("k", b'"written to new"', Call())  # primary new; a copy to old is queued
    assert dispatcher.queue.pending("k") is not None
    routes.router = Router(Flags(use_new_storage=False))
    await dispatcher.set("k", b'"written to old"', Call())
    intent = dispatcher.queue.pending("k")
    assert intent is not None
    assert (intent.source, intent.target) == ("old", "new")
    dispatcher.queue.start()
    assert await dispatcher.queue.drain(5)
    await dispatcher.queue.stop()
    assert await old.get("k") == b'"written to old"'
    assert await new.get("k") == b'"written to old"'
