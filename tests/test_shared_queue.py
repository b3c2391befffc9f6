"""The replication queue shared by the workers of one proxy: the stored record is the truth.

Two ReplicationQueue objects over one store stand for two workers; they share one KeyLocks here,
as workers share their key turns through proxy.sharedlocks.
"""

from __future__ import annotations

from pathlib import Path

from proxy.backends.memory import MemoryBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.keylocks import KeyLocks
from proxy.replication import ReplicationQueue


async def test_a_later_write_on_another_worker_turns_the_copy_around(tmp_path: Path) -> None:
    """Worker A left K pending old->new; worker B then wrote K on new (the other direction).

    A must copy in the direction of the stored record, B's: copying old->new as its memory says
    would overwrite B's acknowledged write with the older value.
    """
    store = await SqliteBackend.open(tmp_path / "queue.sqlite")
    old, new, locks = MemoryBackend(), MemoryBackend(), KeyLocks()
    backends = {"old": old, "new": new}
    worker_a = ReplicationQueue(store, backends, locks, shared=True)
    worker_b = ReplicationQueue(store, backends, locks, shared=True)
    try:
        async with locks.hold("k"):
            await worker_a.record("k", "old", "new", wake=False)
            await old.set("k", b"1")
        async with locks.hold("k"):
            await worker_b.record("k", "new", "old", wake=False)
            await new.set("k", b"2")
        worker_a.start()
        worker_a.wake()
        assert await worker_a.drain(5)
        assert await old.get("k") == b"2"
        assert await new.get("k") == b"2"
    finally:
        await worker_a.stop()
        await worker_b.stop()
        await store.close()


async def test_a_worker_never_removes_a_record_another_worker_wrote_since(tmp_path: Path) -> None:
    """A settled K; before A's record was removed, B recorded K again: B's record must stay."""
    store = await SqliteBackend.open(tmp_path / "queue.sqlite")
    old, new, locks = MemoryBackend(), MemoryBackend(), KeyLocks()
    backends = {"old": old, "new": new}
    worker_a = ReplicationQueue(store, backends, locks, shared=True)
    worker_b = ReplicationQueue(store, backends, locks, shared=True)
    try:
        worker_a.start()
        async with locks.hold("k"):
            await worker_a.record("k", "old", "new", wake=False)
            await worker_a.settle("k")  # both stores hold A's write; the record lingers a moment
        async with locks.hold("k"):
            await worker_b.record("k", "new", "old", wake=False)
        stored_by_b = await store.get("k")
        await worker_a.stop()  # removes what A settled, as a stopping worker does
        assert stored_by_b is not None
        assert await store.get("k") == stored_by_b
        # A second queue over the store (a restarted worker) still finds B's intent.
        restarted = ReplicationQueue(store, backends, locks, shared=True)
        assert await restarted.load() == 1
        assert restarted.pending("k") is not None
    finally:
        await worker_b.stop()
        await store.close()


async def test_a_record_another_worker_settled_is_dropped_without_a_copy(tmp_path: Path) -> None:
    """A's memory says K is pending, but B copied it and removed the record: A does nothing."""
    store = await SqliteBackend.open(tmp_path / "queue.sqlite")
    old, new, locks = MemoryBackend(), MemoryBackend(), KeyLocks()
    backends = {"old": old, "new": new}
    worker_a = ReplicationQueue(store, backends, locks, shared=True)
    try:
        async with locks.hold("k"):
            await worker_a.record("k", "old", "new", wake=False)
            await old.set("k", b"1")
        await store.delete("k")  # what B's removal leaves behind
        await new.set("k", b"later")  # and a later write that only new got, as under an override
        worker_a.start()
        worker_a.wake()
        assert await worker_a.drain(5)
        assert await new.get("k") == b"later"
        assert worker_a.stats().replayed == 0
    finally:
        await worker_a.stop()
        await store.close()
