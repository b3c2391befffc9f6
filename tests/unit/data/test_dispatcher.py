"""The dispatcher on real in-process backends: replication under the kill switch and in shadow mode."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.backends.memory import MemoryBackend
from proxy.data.discrepancies import DiscrepancyLog
from proxy.data.dispatcher import Call, Dispatcher
from proxy.data.keylocks import KeyLocks
from proxy.errors import BackendUnavailable
from proxy.replication.local import ReplicationQueue
from proxy.routing.flags import Flags
from proxy.routing.router import Override, Route, Router
from tests.support.faults import SwitchableBackend


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
    """Under the kill switch old answers, even while a write taken by new is being copied; under an
    override (a rollback) the read follows the copy, so it never misses the write new acknowledged."""
    dispatcher, _, new, routes = build(tmp_path, Flags(use_new_storage=True, write_percentage=100))
    await dispatcher.set("k", b'"on new"', Call())
    assert dispatcher.queue.pending("k") is not None
    routes.router = Router(Flags(use_new_storage=False))
    calls = new.calls
    assert await dispatcher.get("k", Call()) is None
    assert new.calls == calls
    routes.router = Router(Flags(use_new_storage=True, write_percentage=100), Override(Route.OLD, "incident", 1.0))
    assert await dispatcher.get("k", Call()) == b'"on new"'
    dispatcher.queue.start()
    assert await dispatcher.queue.drain(5)
    await dispatcher.queue.stop()
    calls = new.calls
    assert await dispatcher.get("k", Call()) == b'"on new"'  # copied: old answers it now
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


async def listing(dispatcher: Dispatcher, prefix: str = "") -> list[list[str]]:
    return [page async for page in dispatcher.keys(prefix, Call())]


def flat(pages: list[list[str]]) -> list[str]:
    return [key for page in pages for key in page]


@pytest.mark.parametrize(("read", "write"), [(0.0, 100.0), (100.0, 0.0)])
async def test_a_listing_reflects_writes_still_being_copied_to_it(tmp_path: Path, read: float, write: float) -> None:
    """Reads and writes of the keys on different backends, the copies held in the queue: a listing served
    by the backend the copies go to lists a key just set once, leaves a key just deleted out, lists a key
    on both sides once, and keeps its order; once copied, the backend's own listing says the same."""
    dispatcher, old, new, _ = build(tmp_path, Flags(use_new_storage=True, read_percentage=read,
                                                   write_percentage=write))
    for key in ("k:both", "k:deleted", "k:untouched"):
        await old.set(key, b"0")
        await new.inner.set(key, b"0")
    await dispatcher.set("k:added", b"1", Call())
    await dispatcher.set("k:both", b"1", Call())
    await dispatcher.delete("k:deleted", Call())
    await dispatcher.delete("k:never", Call())
    await dispatcher.set("other", b"1", Call())
    assert dispatcher.queue.stats().depth == 5  # every copy is still held
    expected = ["k:added", "k:both", "k:untouched"]
    assert flat(await listing(dispatcher, "k:")) == expected
    assert flat(await listing(dispatcher)) == [*expected, "other"]
    assert dispatcher.metrics.operations[("keys", "old" if read == 0 else "new")] == 2
    dispatcher.queue.start()
    assert await dispatcher.queue.drain(5)
    await dispatcher.queue.stop()
    assert flat(await listing(dispatcher, "k:")) == expected


async def test_a_listing_stays_paged_and_ordered_around_pending_keys(tmp_path: Path) -> None:
    """Pending keys merge into an ordered listing of several pages: no page grows past a backend's page,
    every key comes once, in order; a pending key the listing's backend already holds is not repeated."""
    dispatcher, old, _, _ = build(tmp_path, Flags(use_new_storage=True, write_percentage=100))
    for n in range(0, 3000, 2):
        await old.set(f"k:{n:05}", b"0")
    written = [f"k:{n:05}" for n in range(1, 3000, 7)] + ["k:00004", "k:99999"]
    for key in written:
        await dispatcher.set(key, b"1", Call())
    await dispatcher.delete("k:00010", Call())
    pages = await listing(dispatcher, "k:")
    keys = flat(pages)
    expected = sorted(({f"k:{n:05}" for n in range(0, 3000, 2)} | set(written)) - {"k:00010"})
    assert keys == expected
    assert all(0 < len(page) <= 1000 for page in pages)


async def test_a_listing_under_the_kill_switch_is_old_as_it_stands_and_under_an_override_follows_copies(
        tmp_path: Path) -> None:
    """As for Get: under the kill switch old lists what it holds, pending copies or not; under an override
    (a rollback), the writes new took and old has not been given yet are listed as they stand."""
    dispatcher, old, _, routes = build(tmp_path, Flags(use_new_storage=True, write_percentage=100))
    await old.set("k:old", b"0")
    await dispatcher.set("k:new", b"1", Call())
    await dispatcher.delete("k:old", Call())
    assert flat(await listing(dispatcher)) == ["k:new"]
    routes.router = Router(Flags(use_new_storage=False))
    assert flat(await listing(dispatcher)) == ["k:old"]
    routes.router = Router(Flags(use_new_storage=True, write_percentage=100), Override(Route.OLD, "incident", 1.0))
    assert flat(await listing(dispatcher)) == ["k:new"]
    assert await dispatcher.get("k:new", Call()) == b"1"  # acknowledged by new, still on its way to old
    assert await dispatcher.get("k:old", Call()) is None  # its delete too


async def test_a_listing_fails_when_the_source_of_a_pending_key_cannot_say(tmp_path: Path) -> None:
    """A listing that cannot learn whether a pending key exists fails rather than answer incompletely."""
    dispatcher, _, new, _ = build(tmp_path, Flags(use_new_storage=True, write_percentage=100))
    await dispatcher.set("k", b"1", Call())
    new.down = True
    with pytest.raises(BackendUnavailable):
        await listing(dispatcher)


@pytest.mark.parametrize("read", [0.0, 100.0])
async def test_a_keys_comparison_leaves_pending_keys_out(tmp_path: Path, read: float) -> None:
    """In shadow mode a write whose shadow copy failed stays pending: whichever backend lists, that key's
    known lag is no discrepancy, while a real difference in another key still is."""
    dispatcher, old, new, routes = build(tmp_path, Flags(use_new_storage=True, shadow_mode_enabled=True))
    new.down = True  # old takes the write; the shadow write to new fails and the copy stays queued
    await dispatcher.set("k:pending", b"1", Call())
    await dispatcher.close()
    new.down = False
    assert dispatcher.queue.pending("k:pending") is not None
    report = dispatcher.discrepancies.report
    assert report.by_kind["shadow_error"] == report.total == 1  # the failed shadow write
    routes.router = Router(Flags(use_new_storage=True, shadow_mode_enabled=True, read_percentage=read))
    assert flat(await listing(dispatcher)) == ["k:pending"]
    await dispatcher.close()
    assert report.total == 1
    assert report.compared["keys"] == 1
    await old.set("k:only-old", b"0")  # a real difference, not pending
    await listing(dispatcher)
    await dispatcher.close()
    assert report.total == 2
    assert report.by_op["keys"] == 1
    assert "k:only-old" in report.latest[-1].detail


async def test_a_shadow_read_of_a_key_whose_copy_is_pending_is_not_compared(tmp_path: Path) -> None:
    """When a key's last write has not reached the shadow yet, its reads are answered but not compared:
    the lag is not a discrepancy. Once the copy lands, the key is compared again and agrees."""
    dispatcher, _old, new, _ = build(tmp_path, Flags(use_new_storage=True, shadow_mode_enabled=True))
    new.down = True
    await dispatcher.set("k", b'"v"', Call())  # old takes it; the shadow write fails, a copy is queued
    await dispatcher.close()
    new.down = False
    assert dispatcher.queue.pending("k") is not None
    assert await dispatcher.get("k", Call()) == b'"v"'
    assert await dispatcher.has("k", Call()) is True
    await dispatcher.close()
    report = dispatcher.discrepancies.report
    assert report.by_kind.get("missing_in_shadow", 0) == 0
    assert dispatcher.shadow.pending_not_compared == 2
    dispatcher.queue.start()
    assert await dispatcher.queue.drain(5)
    await dispatcher.queue.stop()
    assert await dispatcher.get("k", Call()) == b'"v"'
    await dispatcher.close()
    assert dispatcher.shadow.pending_not_compared == 2
    assert report.by_kind.get("missing_in_shadow", 0) == 0
    assert report.compared["get"] == 1
