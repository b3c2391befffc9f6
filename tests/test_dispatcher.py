"""The dispatcher on real in-process backends: replication under the kill switch and in shadow mode."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.backends.memory import MemoryBackend
from proxy.discrepancies import DiscrepancyLog
from proxy.dispatcher import Call, Dispatcher
from proxy.errors import BackendUnavailable
from proxy.flags import Flags
from proxy.keylocks import KeyLocks
from proxy.replication import ReplicationQueue
from proxy.router import Override, Route, Router
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


class Jittery(MemoryBackend):
    """A real in-memory store whose writes take a random while, so concurrent writes overtake each other."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    async def set(self, key: str, value: bytes) -> None:
        await asyncio.sleep(self.rng.random() / 200)
        await super().set(key, value)

    async def delete(self, key: str) -> bool:
        await asyncio.sleep(self.rng.random() / 200)
        return await super().delete(key)


class Watching(MemoryBackend):
    """Records, at each write, whether the queue already held a durable intent for the key."""

    def __init__(self, store: MemoryBackend) -> None:
        super().__init__()
        self.store = store
        self.intent_seen: list[bool] = []

    async def set(self, key: str, value: bytes) -> None:
        self.intent_seen.append(await self.store.get(key) is not None)
        await super().set(key, value)


async def test_the_intent_is_durable_before_the_primary_write(tmp_path: Path) -> None:
    """The replication intent is in the queue's store before the primary is written, whichever the primary."""
    store = MemoryBackend()
    old, new = Watching(store), Watching(store)
    locks = KeyLocks()
    queue = ReplicationQueue(store, {"old": old, "new": new}, locks)
    routes = Routes(Router(Flags(use_new_storage=True, enabled_for_keys=("^n:",))))
    dispatcher = Dispatcher({Route.OLD: old, Route.NEW: new}, routes, queue, locks, DiscrepancyLog(tmp_path))
    await dispatcher.set("o:1", b"1", Call())
    await dispatcher.set("n:1", b"2", Call())
    assert (old.intent_seen, new.intent_seen) == ([True], [True])
    assert {(i.source, i.target) for i in (queue.pending("o:1"), queue.pending("n:1")) if i} == {
        ("old", "new"), ("new", "old")}


@pytest.mark.parametrize("shadow", [False, True])
@pytest.mark.parametrize("seed", range(5))
async def test_concurrent_writes_of_one_key_land_in_one_order_on_both(tmp_path: Path, shadow: bool, seed: int) -> None:
    """Many concurrent writes and deletes of a few keys, each store slow at random and the flags
    flipping between old-first and new-first: once replayed, both stores hold the same, and each
    key holds the write acknowledged last."""
    rng = random.Random(seed)
    old, new = Jittery(rng), Jittery(rng)
    locks = KeyLocks()
    queue = ReplicationQueue(MemoryBackend(), {"old": old, "new": new}, locks)
    routes = Routes(Router(Flags(use_new_storage=True, shadow_mode_enabled=shadow)))
    dispatcher = Dispatcher({Route.OLD: old, Route.NEW: new}, routes, queue, locks, DiscrepancyLog(tmp_path))
    queue.start()
    acknowledged: dict[str, bytes | None] = {}

    async def write(n: int) -> None:
        key = f"k{n % 3}"
        if n % 5 == 4:
            await dispatcher.delete(key, Call())
            acknowledged[key] = None
        else:
            await dispatcher.set(key, str(n).encode(), Call())
            acknowledged[key] = str(n).encode()
        if n % 7 == 0:  # move writes between the stores under traffic
            percentage = rng.choice([0.0, 100.0])
            routes.router = Router(Flags(use_new_storage=True, shadow_mode_enabled=shadow,
                                         write_percentage=percentage))

    await asyncio.gather(*(write(n) for n in range(60)))
    await dispatcher.close()
    assert await queue.drain(10)
    await queue.stop()
    for key, value in acknowledged.items():
        assert await old.get(key) == value, key
        assert await new.get(key) == value, key


async def test_a_failed_primary_leaves_the_shadow_copy_to_the_replayer(tmp_path: Path) -> None:
    """In shadow mode, when the primary write fails and the shadow write lands, the intent stays and the
    replayer makes the shadow hold the primary's state again: the two never keep different values."""
    dispatcher, old, new, _ = build(tmp_path, Flags(use_new_storage=True, shadow_mode_enabled=True,
                                                   write_percentage=100))
    await new.inner.set("k", b'"before"')
    await old.set("k", b'"before"')
    new.down = True  # the primary (new) fails; the shadow (old) takes the write
    with pytest.raises(BackendUnavailable):
        await dispatcher.set("k", b'"lost"', Call())
    await dispatcher.close()
    assert await old.get("k") == b'"lost"'
    intent = dispatcher.queue.pending("k")
    assert intent is not None
    assert (intent.source, intent.target) == ("new", "old")
    new.down = False
    dispatcher.queue.start()
    assert await dispatcher.queue.drain(5)
    await dispatcher.queue.stop()
    assert await old.get("k") == await new.get("k") == b'"before"'


async def test_a_read_moved_before_its_write_was_copied_still_sees_the_write(tmp_path: Path) -> None:
    """Reads moved to new while the key's last write (taken by old) is still queued for new are answered
    by old, which holds it; once copied, new answers again."""
    dispatcher, _, new, routes = build(tmp_path, Flags(use_new_storage=True))
    await dispatcher.set("k", b'"written"', Call())  # old takes it; the copy to new waits (no replayer yet)
    await dispatcher.delete("gone", Call())
    await new.inner.set("gone", b'"stale"')
    routes.router = Router(Flags(use_new_storage=True, shadow_mode_enabled=True, read_percentage=100))
    calls = new.calls
    assert await dispatcher.get("k", Call()) == b'"written"'
    assert not await dispatcher.has("gone", Call())
    await dispatcher.close()
    assert new.calls == calls  # neither read nor compared on new: it is known to lag
    assert dispatcher.metrics.operations[("get", "old")] == 1
    dispatcher.queue.start()
    assert await dispatcher.queue.drain(5)
    await dispatcher.queue.stop()
    assert await dispatcher.get("k", Call()) == b'"written"'
    assert dispatcher.metrics.operations[("get", "new")] == 1


async def test_the_kill_switch_keeps_reads_off_new_even_with_a_copy_pending(tmp_path: Path) -> None:
    """Under the kill switch (or an override) old answers, even while a write taken by new is being copied."""
    dispatcher, _, new, routes = build(tmp_path, Flags(use_new_storage=True, write_percentage=100))
    await dispatcher.set("k", b'"on new"', Call())
    assert dispatcher.queue.pending("k") is not None
    routes.router = Router(Flags(use_new_storage=False))
    calls = new.calls
    assert await dispatcher.get("k", Call()) is None
    routes.router = Router(Flags(use_new_storage=True, write_percentage=100), Override(Route.OLD, "incident", 1.0))
    assert await dispatcher.get("k", Call()) is None
    assert new.calls == calls


async def test_the_end_of_a_listing_counts_as_a_successful_backend_call(tmp_path: Path) -> None:
    """Listing keys to the end records no failed backend call: the StopAsyncIteration that ends the pages
    is the listing's success, not an error."""
    dispatcher, old, _, _ = build(tmp_path, Flags())
    await old.set("a", b"1")
    pages = [page async for page in dispatcher.keys("", Call())]
    assert pages == [["a"]]
    assert not dispatcher.metrics.errors
    assert dispatcher.health[Route.OLD].healthy
