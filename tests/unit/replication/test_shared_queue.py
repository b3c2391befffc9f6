"""The replication queue shared by the workers of one proxy: the stored record is the truth.

Two SharedReplicationQueue objects over one store stand for two workers; they share one KeyLocks here,
as workers share their key turns through proxy.data.sharedlocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.backends.memory import MemoryBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.data.keylocks import KeyLocks
from proxy.replication.shared import SharedReplicationQueue


@dataclass
class Workers:
    store: SqliteBackend
    old: MemoryBackend
    new: MemoryBackend
    locks: KeyLocks

    def queue(self) -> SharedReplicationQueue:
        """One more worker's queue over the shared store."""
        return SharedReplicationQueue(self.store, {"old": self.old, "new": self.new}, self.locks)


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[Workers]:
    store = await SqliteBackend.open(tmp_path / "queue.sqlite")
    try:
        yield Workers(store, MemoryBackend(), MemoryBackend(), KeyLocks())
    finally:
        await store.close()


async def test_a_later_write_on_another_worker_turns_the_copy_around(workers: Workers) -> None:
    """Worker A left K pending old->new; worker B then wrote K on new (the other direction).

    A must copy in the direction of the stored record, B's: copying old->new as its memory says
    would overwrite B's acknowledged write with the older value.
    """
    worker_a, worker_b = workers.queue(), workers.queue()
    try:
        async with workers.locks.hold("k"):
            await worker_a.record("k", "old", "new", wake=False)
            await workers.old.set("k", b"1")
        async with workers.locks.hold("k"):
            await worker_b.record("k", "new", "old", wake=False)
            await workers.new.set("k", b"2")
        worker_a.start()
        worker_a.wake()
        assert await worker_a.drain(5)
        assert await workers.old.get("k") == b"2"
        assert await workers.new.get("k") == b"2"
    finally:
        await worker_a.stop()
        await worker_b.stop()


async def test_a_worker_never_removes_a_record_another_worker_wrote_since(workers: Workers) -> None:
    """A settled K; before A's record was removed, B recorded K again: B's record must stay."""
    worker_a, worker_b = workers.queue(), workers.queue()
    try:
        worker_a.start()
        async with workers.locks.hold("k"):
            await worker_a.record("k", "old", "new", wake=False)
            worker_a.settle("k")  # both stores hold A's write; the record lingers a moment
        async with workers.locks.hold("k"):
            await worker_b.record("k", "new", "old", wake=False)
        stored_by_b = await workers.store.get("k")
        await worker_a.stop()  # removes what A settled, as a stopping worker does
        assert stored_by_b is not None
        assert await workers.store.get("k") == stored_by_b
        # A second queue over the store (a restarted worker) still finds B's intent.
        restarted = workers.queue()
        assert await restarted.load() == 1
        assert restarted.pending("k") is not None
    finally:
        await worker_b.stop()


async def test_a_record_another_worker_settled_is_dropped_without_a_copy(workers: Workers) -> None:
    """A's memory says K is pending, but B copied it and removed the record: A does nothing."""
    worker_a = workers.queue()
    try:
        async with workers.locks.hold("k"):
            await worker_a.record("k", "old", "new", wake=False)
            await workers.old.set("k", b"1")
        await workers.store.delete("k")  # what B's removal leaves behind
        await workers.new.set("k", b"later")  # and a later write that only new got, as under an override
        worker_a.start()
        worker_a.wake()
        assert await worker_a.drain(5)
        assert await workers.new.get("k") == b"later"
        assert worker_a.stats().replayed == 0
    finally:
        await worker_a.stop()
