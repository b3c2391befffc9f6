"""Two workers' dispatchers over the same stores and one shared replication queue (`--workers N`).

Each worker has its own memory of pending copies; what one worker must know of another's is in the
queue store. They share one KeyLocks here, as workers share their key turns through proxy.data.sharedlocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.backends.memory import MemoryBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.data.discrepancies import DiscrepancyLog
from proxy.data.dispatcher import Call, Dispatcher
from proxy.data.keylocks import KeyLocks
from proxy.replication.shared import SharedReplicationQueue
from proxy.routing.flags import Flags
from proxy.routing.router import Route, Router


@dataclass
class Routes:
    router: Router


@dataclass
class TwoWorkers:
    a: Dispatcher
    b: Dispatcher
    old: MemoryBackend
    new: MemoryBackend
    routes: Routes
    store: SqliteBackend


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[TwoWorkers]:
    store = await SqliteBackend.open(tmp_path / "queue.sqlite")
    old, new, locks = MemoryBackend(), MemoryBackend(), KeyLocks()
    routes = Routes(Router(Flags()))

    def worker(name: str) -> Dispatcher:
        # No replayer runs: every copy a write leaves pending stays pending, as if not yet made.
        queue = SharedReplicationQueue(store, {"old": old, "new": new}, locks)
        return Dispatcher({Route.OLD: old, Route.NEW: new}, routes, queue, locks, DiscrepancyLog(tmp_path / name))

    try:
        yield TwoWorkers(worker("a"), worker("b"), old, new, routes, store)
    finally:
        await store.close()


async def test_a_read_on_another_worker_sees_a_write_whose_copy_is_pending(workers: TwoWorkers) -> None:
    """Writes go to new, reads to old: worker B reads the key from new while A's copy to old is pending."""
    workers.routes.router = Router(Flags(use_new_storage=True, write_percentage=100, read_percentage=0))
    await workers.old.set("k", b'"before"')
    await workers.a.set("k", b'"after"', Call())
    assert await workers.old.get("k") == b'"before"'  # the copy has not been made
    assert await workers.b.get("k", Call()) == b'"after"'
    assert await workers.b.has("gone", Call()) is False
    await workers.a.delete("k", Call())
    assert await workers.b.has("k", Call()) is False


async def test_a_read_whose_key_is_written_where_it_is_read_asks_nobody(workers: TwoWorkers) -> None:
    """Reads and writes of the key both on old: no copy can be on its way to old, so B reads old
    without a look at the queue store (closed here: a look would fail the read)."""
    workers.routes.router = Router(Flags(use_new_storage=True, write_percentage=0, read_percentage=0))
    await workers.a.set("k", b'"written"', Call())
    await workers.store.close()
    assert await workers.b.get("k", Call()) == b'"written"'


async def test_a_kill_switch_write_on_another_worker_turns_a_pending_copy_around(workers: TwoWorkers) -> None:
    """A's copy from new to old is pending when the kill switch is thrown; B's write to old must
    record its own copy (old to new) in the store, so whoever replays copies B's write, not A's."""
    workers.routes.router = Router(Flags(use_new_storage=True, write_percentage=100))
    await workers.a.set("k", b'"written to new"', Call())
    workers.routes.router = Router(Flags(use_new_storage=False))
    await workers.b.set("k", b'"written to old"', Call())
    queue = workers.b.queue
    assert isinstance(queue, SharedReplicationQueue)
    intent = await queue.stored_intent("k")
    assert intent is not None
    assert (intent.source, intent.target) == ("old", "new")
    workers.a.queue.start()  # A still believes its own copy (new -> old) is pending
    workers.a.queue.wake()
    assert await workers.a.queue.drain(5)
    await workers.a.queue.stop()
    assert await workers.old.get("k") == b'"written to old"'
    assert await workers.new.get("k") == b'"written to old"'


async def test_a_listing_on_another_worker_sees_writes_whose_copies_are_pending(workers: TwoWorkers) -> None:
    """Writes go to new, reads to old: B's Keys lists what A's last writes left, not old's stale view."""
    workers.routes.router = Router(Flags(use_new_storage=True, write_percentage=100, read_percentage=0))
    await workers.old.set("k:deleted", b"1")
    await workers.old.set("k:kept", b"1")
    await workers.a.set("k:added", b"2", Call())
    await workers.a.delete("k:deleted", Call())
    listed = [key async for page in workers.b.keys("k:", Call()) for key in page]
    assert sorted(listed) == ["k:added", "k:kept"]
    assert sorted(await _keys(workers.old, "k:")) == ["k:deleted", "k:kept"]  # the copies are still pending


async def _keys(backend: MemoryBackend, prefix: str) -> list[str]:
    return [key async for page in backend.keys(prefix) for key in page]


async def test_a_worker_reads_by_the_stored_record_not_its_own_older_one(workers: TwoWorkers) -> None:
    """A wrote k to new (its memory: a copy new -> old pending); the flags then send writes to old and
    reads to new, and B writes k to old. A's memory is out of date: A must read k as B left it."""
    workers.routes.router = Router(Flags(use_new_storage=True, write_percentage=100, read_percentage=0))
    await workers.a.set("k", b'"A on new"', Call())
    await workers.a.set("gone", b'"A on new"', Call())
    workers.routes.router = Router(Flags(use_new_storage=True, write_percentage=0, read_percentage=100))
    await workers.b.set("k", b'"B on old"', Call())
    await workers.b.delete("gone", Call())
    assert await workers.a.get("k", Call()) == b'"B on old"'
    assert await workers.a.has("gone", Call()) is False
    assert await _keys(workers.new, "") == ["gone", "k"]  # new itself still has A's writes
    assert [key async for page in workers.a.keys("", Call()) for key in page] == ["k"]
