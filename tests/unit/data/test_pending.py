"""The pending-copy resolvers: one process reads its queue's memory, the workers of `--workers N` the
shared queue's stored record, and a read's route follows what they say."""

from __future__ import annotations

from pathlib import Path

from proxy.backends.memory import MemoryBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.data.keylocks import KeyLocks
from proxy.data.pending import ASK_STORE, LocalPending, SharedPending, follow, pending_copies
from proxy.data.shadow import ShadowCounters
from proxy.replication.local import ReplicationQueue
from proxy.replication.queue import Intent
from proxy.replication.shared import SharedReplicationQueue
from proxy.routing.flags import Flags
from proxy.routing.router import Decision, Op, Reason, Route, Router


def backends() -> dict[str, MemoryBackend]:
    return {"old": MemoryBackend(), "new": MemoryBackend()}


def test_the_resolver_is_chosen_by_the_queue_form() -> None:
    """A local queue gets the resolver that reads memory, a shared one the resolver that reads the store."""
    assert isinstance(pending_copies(ReplicationQueue(MemoryBackend(), backends(), KeyLocks())), LocalPending)
    assert isinstance(pending_copies(SharedReplicationQueue(MemoryBackend(), backends(), KeyLocks())), SharedPending)


async def test_one_process_answers_from_memory_at_once() -> None:
    """One process never asks the store: reads and writes get the queue's pending intent, or None."""
    queue = ReplicationQueue(MemoryBackend(), backends(), KeyLocks())
    pending = LocalPending(queue)
    assert pending.for_read("k") is None
    assert pending.for_write("k") is None
    await queue.record("k", "old", "new", wake=False)
    assert pending.for_read("k") == queue.pending("k")
    assert pending.for_write("k") == queue.pending("k")
    decision = Router(Flags(use_new_storage=True)).route(Op.KEYS, "")
    assert set(await pending.under("", decision)) == {"k"}


async def test_a_worker_asks_the_store_for_reads_whose_copy_may_be_on_its_way(tmp_path: Path) -> None:
    """Under --workers N a read looks at the stored record when the key's writes go elsewhere than its
    reads, and finds another worker's record there; a write asks the store unless memory knows already."""
    store = await SqliteBackend.open(tmp_path / "queue.sqlite")
    try:
        locks = KeyLocks()
        mine, other = (SharedReplicationQueue(store, backends(), locks) for _ in range(2))
        pending = SharedPending(mine)
        await other.record("k", "new", "old", wake=False)
        assert pending.for_read("k") is ASK_STORE
        assert pending.for_write("k") is ASK_STORE
        router = Router(Flags(use_new_storage=True, write_percentage=100, read_percentage=0))
        decision = router.route(Op.GET, "k")
        stored = await pending.stored_for_read("k", decision, router, None)
        assert stored is not None
        assert (stored.source, stored.target) == ("new", "old")
        assert await pending.stored("k") == stored
        await mine.record("k", "old", "new", wake=False)
        assert pending.for_write("k") == mine.pending("k")
    finally:
        await store.close()


async def test_a_worker_reading_where_the_key_is_written_asks_nobody(tmp_path: Path) -> None:
    """Reads and writes on one store, nothing pending in memory: no look at the store (closed here)."""
    store = await SqliteBackend.open(tmp_path / "queue.sqlite")
    pending = SharedPending(SharedReplicationQueue(store, backends(), KeyLocks()))
    await store.close()
    router = Router(Flags(use_new_storage=True))
    assert await pending.stored_for_read("k", router.route(Op.GET, "k"), router, None) is None
    assert await pending.under("", Router(Flags(use_new_storage=False)).route(Op.KEYS, "")) == {}


def test_a_read_follows_a_copy_on_its_way_to_its_backend() -> None:
    """A read routed where the key's copy is going is answered by the copy's source, uncompared."""
    decision = Decision(Route.NEW, Route.OLD, compare=True, reason=Reason.PERCENTAGE)
    counters = ShadowCounters()
    followed = follow(decision, Intent("k", "old", "new", 0.0), counters, None)
    assert (followed.primary, followed.secondary, followed.compare) == (Route.OLD, Route.NEW, False)
    assert counters.pending_not_compared == 0


def test_a_read_whose_shadow_lags_is_answered_but_not_compared() -> None:
    """A copy on its way to the shadow leaves the route as it is but turns the comparison off, counted."""
    decision = Decision(Route.OLD, Route.NEW, compare=True, reason=Reason.PERCENTAGE)
    counters = ShadowCounters()
    followed = follow(decision, Intent("k", "old", "new", 0.0), counters, None)
    assert (followed.primary, followed.compare) == (Route.OLD, False)
    assert counters.pending_not_compared == 1
    uncompared = Decision(Route.OLD, Route.NEW, compare=False, reason=Reason.PERCENTAGE)
    assert follow(uncompared, Intent("k", "old", "new", 0.0), counters, None) is uncompared
