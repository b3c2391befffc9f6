"""The durable replication queue: intents survive restarts and every write converges on the target."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.backends.memory import MemoryBackend
from proxy.data.keylocks import KeyLocks
from proxy.replication.local import ReplicationQueue
from tests.support.faults import SwitchableBackend


def make_queue(
    store: MemoryBackend | None = None,
) -> tuple[ReplicationQueue, MemoryBackend, SwitchableBackend, KeyLocks]:
    old = MemoryBackend()
    new = SwitchableBackend(MemoryBackend())
    locks = KeyLocks()
    queue = ReplicationQueue(store or MemoryBackend(), {"old": old, "new": new}, locks)
    return queue, old, new, locks


async def contents(backend: MemoryBackend | SwitchableBackend) -> dict[str, bytes]:
    return {k: v async for page in backend.scan() for k, v in page}


async def test_replayer_copies_the_current_value_and_forgets_the_intent() -> None:
    """A recorded key is copied from source to target and then leaves the queue."""
    queue, old, new, _ = make_queue()
    await queue.record("k", "old", "new")
    await old.set("k", b'{"v": 1}')
    queue.start()
    assert await queue.drain(5)
    await queue.stop()
    assert await new.get("k") == b'{"v": 1}'
    assert queue.stats().depth == 0
    assert queue.stats().replayed == 1


async def test_a_delete_is_replicated_as_an_absence() -> None:
    """When the source no longer has the key, the target loses it too (no resurrection)."""
    queue, _, new, _ = make_queue()
    await new.set("gone", b"1")
    await queue.record("gone", "old", "new")
    queue.start()
    assert await queue.drain(5)
    await queue.stop()
    assert await new.get("gone") is None


async def test_replay_retries_while_the_target_is_down() -> None:
    """Intents stay queued and are retried with backoff until the target comes back."""
    queue, old, new, _ = make_queue()
    new.down = True
    await old.set("k", b"2")
    await queue.record("k", "old", "new")
    queue.start()
    assert not await queue.drain(0.3)
    stats = queue.stats()
    assert stats.depth == 1
    assert 2 <= stats.failures <= 6  # 50 ms, then doubling: a few attempts, not a hot loop
    assert stats.last_error is not None
    assert "down (injected)" in stats.last_error
    new.down = False
    assert await queue.drain(10)
    await queue.stop()
    assert await new.get("k") == b"2"


async def test_intents_survive_a_restart_of_the_queue() -> None:
    """A queue opened on the same store finds the intents the previous one left and replays them."""
    store = MemoryBackend()
    first, _, _, _ = make_queue(store)
    await first.record("a", "old", "new")
    await first.record("b", "new", "old")
    second, old, new, _ = make_queue(store)
    await old.set("a", b"1")
    await new.set("b", b"2")
    assert await second.load() == 2
    second.start()
    assert await second.drain(5)
    await second.stop()
    assert await new.get("a") == b"1"
    assert await old.get("b") == b"2"
    assert await contents(store) == {}


async def test_recording_an_already_pending_key_keeps_its_age() -> None:
    """Re-recording a pending key in the same direction writes nothing new and keeps its first time."""
    now = [100.0]
    store = MemoryBackend()
    queue = ReplicationQueue(store, {"old": MemoryBackend(), "new": MemoryBackend()}, KeyLocks(), clock=lambda: now[0])
    await queue.record("k", "old", "new")
    now[0] = 105.0
    await queue.record("k", "old", "new")
    assert queue.stats().oldest_age_s == 5.0
    assert queue.stats().depth == 1


@settings(max_examples=30, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from("abcd"), st.one_of(st.none(), st.integers(0, 9))), max_size=40),
    seed=st.integers(0, 2**16),
)
def test_concurrent_writes_and_replay_converge(ops: list[tuple[str, int | None]], seed: int) -> None:
    """Whatever interleaving of writes, deletes, outages and replays, the target ends equal to the source."""

    async def scenario() -> None:
        queue, old, new, locks = make_queue()
        rng = random.Random(seed)
        queue.start()

        async def write(key: str, value: int | None) -> None:
            async with locks.hold(key):
                await queue.record(key, "old", "new")
                if value is None:
                    await old.delete(key)
                else:
                    await old.set(key, str(value).encode())

        for key, value in ops:
            new.down = rng.random() < 0.2
            await write(key, value)
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        new.down = False
        assert await queue.drain(10)
        await queue.stop()
        assert await contents(new) == await contents(old)

    asyncio.run(scenario())


class CountingStore(MemoryBackend):
    """A real in-memory store that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    async def set(self, key: str, value: bytes) -> None:
        self.writes += 1
        await super().set(key, value)

    async def delete(self, key: str) -> bool:
        self.writes += 1
        return await super().delete(key)


async def test_settled_records_are_removed_in_the_background_and_reused_meanwhile() -> None:
    """A hot key settled and written again reuses its durable record; the record goes once it stays settled."""
    store = CountingStore()
    locks = KeyLocks()
    queue = ReplicationQueue(store, {"old": MemoryBackend(), "new": MemoryBackend()}, locks)
    await queue.record("hot", "old", "new")
    queue.settle("hot")
    await queue.record("hot", "old", "new")  # its record is still stored: no second write
    assert store.writes == 1
    assert queue.pending("hot") is not None
    queue.settle("hot")
    queue.start()
    await queue.stop()  # stopping removes what was settled
    assert await contents(store) == {}
    await queue.record("hot", "new", "old")  # another direction is a new durable record
    assert store.writes == 3


async def test_pending_under_a_prefix_is_a_snapshot_of_the_pending_intents() -> None:
    """pending_under lists the pending intents of the keys under a prefix, and none once they are copied."""
    queue, _, _, _ = make_queue()
    assert queue.pending_under("") == {}
    await queue.record("a:1", "old", "new")
    await queue.record("a:2", "new", "old")
    await queue.record("b:1", "old", "new")
    snapshot = queue.pending_under("a:")
    assert {k: (i.source, i.target) for k, i in snapshot.items()} == {"a:1": ("old", "new"), "a:2": ("new", "old")}
    assert set(queue.pending_under("")) == {"a:1", "a:2", "b:1"}
    queue.settle("a:1")
    assert set(snapshot) == {"a:1", "a:2"}  # a copy, not a view
    assert set(queue.pending_under("a:")) == {"a:2"}
