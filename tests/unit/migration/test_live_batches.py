"""A live migration copies a page at a time under the page's key locks: the locks of a page are taken
in one order (so pages and single-key writers never wait in a circle), and with writes and deletes
flowing through the real data plane meanwhile, no acknowledged write is lost and no deleted key
comes back, in either store."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.backends.jsonfile import JsonFileBackend
from proxy.backends.memory import MemoryBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.data.discrepancies import DiscrepancyLog
from proxy.data.dispatcher import Call, Dispatcher
from proxy.data.keylocks import KeyLocks
from proxy.data.live import Live
from proxy.data.sharedlocks import SharedKeyLocks, slot
from proxy.migration.migrate import MAX_LIVE_PAGE, migrate
from proxy.migration.stores import Stores
from proxy.replication.local import ReplicationQueue
from proxy.replication.shared import SharedReplicationQueue
from proxy.routing.router import Route
from proxy.routing.watcher import FlagWatcher
from tests.support.paths import ROOT
from tests.support.stores import backend_contents

# -- the page's locks -----------------------------------------------------------------------------


async def test_a_page_holds_its_keys_until_released_and_a_writer_of_one_waits_for_it() -> None:
    """While a page is held, a write of one of its keys waits; it goes on once the page is released."""
    locks = KeyLocks()
    release_page = await locks.acquire_many(["b", "a", "c", "a"])
    assert len(locks) == 3
    writer = asyncio.ensure_future(locks.acquire("b"))
    await asyncio.sleep(0)
    assert not writer.done()
    free = await locks.acquire("d")  # a key outside the page is not held
    free()
    release_page()
    (await asyncio.wait_for(writer, 1))()
    assert len(locks) == 0


async def test_pages_and_single_key_writers_never_wait_in_a_circle() -> None:
    """Overlapping pages taken in every order of their keys, and writers of one key, all finish."""
    rng = random.Random(7)
    locks = KeyLocks()
    keys = [f"k{i}" for i in range(12)]
    holding: set[str] = set()

    async def hold(page: list[str]) -> None:
        release = await locks.acquire_many(page)
        assert not holding & set(page)  # nobody else holds any of them
        holding.update(page)
        await asyncio.sleep(0)
        holding.difference_update(page)
        release()

    work = [hold(rng.sample(keys, rng.randint(1, 6))) for _ in range(300)]
    work += [hold([rng.choice(keys)]) for _ in range(300)]
    rng.shuffle(work)
    async with asyncio.timeout(30):  # a guard against a hang, not a speed check
        await asyncio.gather(*work)
    assert len(locks) == 0


async def test_a_page_cancelled_while_it_waits_leaves_no_key_held() -> None:
    """A page that gives up while waiting for one key lets go of the keys it had already taken."""
    locks = KeyLocks()
    release_c = await locks.acquire("c")
    page = asyncio.ensure_future(locks.acquire_many(["a", "b", "c", "d"]))
    await asyncio.sleep(0)
    assert not page.done()
    page.cancel()
    with pytest.raises(asyncio.CancelledError):
        await page
    release_c()
    assert len(locks) == 0


# Holds the turns of the keys in argv[2:] until stdin closes, saying "held" once it has them.
HOLDER = """
import asyncio, sys
from pathlib import Path
from proxy.data.sharedlocks import SharedKeyLocks

async def main() -> None:
    locks = SharedKeyLocks(Path(sys.argv[1]))
    release = await locks.acquire_many(sys.argv[2:])
    print("held", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    release()

asyncio.run(main())
"""


@dataclass
class Holder:
    """Another worker holding some keys' turns."""

    process: subprocess.Popen[str]

    @classmethod
    def start(cls, state_dir: Path, *keys: str) -> Holder:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(state_dir), *keys],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        return cls(process)

    def wait_held(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline()

    def let_go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(10) == 0

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


async def test_a_page_waits_for_a_key_another_worker_holds_and_then_holds_them_all(tmp_path: Path) -> None:
    """Across processes: the page gets its keys only once the other worker lets go of its one key, and
    while the page holds them, another worker can take none of them."""
    locks = SharedKeyLocks(tmp_path)
    other = Holder.start(tmp_path, "page:3")
    third: Holder | None = None
    try:
        assert await asyncio.to_thread(other.wait_held) == "held\n"
        page = asyncio.ensure_future(locks.acquire_many([f"page:{i}" for i in range(6)]))
        await asyncio.sleep(0.2)
        assert not page.done()
        await asyncio.to_thread(other.let_go)
        release = await asyncio.wait_for(page, 5)
        third = Holder.start(tmp_path, "page:0")
        said = asyncio.ensure_future(asyncio.to_thread(third.wait_held))
        await asyncio.sleep(0.3)
        assert not said.done()  # held by the page
        release()
        assert await asyncio.wait_for(said, 5) == "held\n"
        await asyncio.to_thread(third.let_go)
    finally:
        other.end()
        if third is not None:
            third.end()
        locks.close()


async def test_a_page_given_up_while_another_worker_holds_a_key_leaves_nothing_behind(tmp_path: Path) -> None:
    """The cancelled page lets go of the bytes it took, in this worker and in the kernel: a writer here
    and another worker can then take every key of it."""
    keys = [f"page:{i}" for i in range(6)]
    locks = SharedKeyLocks(tmp_path)
    other = Holder.start(tmp_path, "page:4")
    later: Holder | None = None
    try:
        assert await asyncio.to_thread(other.wait_held) == "held\n"
        page = asyncio.ensure_future(locks.acquire_many(keys))
        await asyncio.sleep(0.2)
        page.cancel()
        with pytest.raises(asyncio.CancelledError):
            await page
        await asyncio.to_thread(other.let_go)
        # Its slots go back only after its bytes did, once the waiting thread is done: this waits for that.
        release = await asyncio.wait_for(locks.acquire(keys[0]), 5)
        release()
        later = Holder.start(tmp_path, *keys)
        assert await asyncio.wait_for(asyncio.to_thread(later.wait_held), 5) == "held\n"
        await asyncio.to_thread(later.let_go)
    finally:
        other.end()
        if later is not None:
            later.end()
        locks.close()


async def test_keys_sharing_a_slot_are_one_turn_in_a_page(tmp_path: Path) -> None:
    """Two keys of one byte in a page take the byte once (a second take would wait for itself)."""
    first = "key-0"
    second = next(f"key-{i}" for i in range(1, 10**7) if slot(f"key-{i}") == slot(first))
    locks = SharedKeyLocks(tmp_path)
    try:
        release = await asyncio.wait_for(locks.acquire_many([first, second, "other"]), 5)
        waiting = asyncio.ensure_future(locks.acquire(second))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        release()
        (await asyncio.wait_for(waiting, 1))()
    finally:
        locks.close()


# -- live migration under random writes --------------------------------------------------------

#: Flag files the live copy is meant to run under: shadow (writes on old, shadowed to new), writes
#: split between the stores, and all writes on new (each then copied to old by the queue).
MODES = {
    "shadow": "revision: shadow\nuse_new_storage: true\nshadow_mode_enabled: true\n",
    "split": "revision: split\nuse_new_storage: true\ntraffic_percentage:\n  read: 50\n  write: 50\n",
    "new": "revision: new\nuse_new_storage: true\ntraffic_percentage:\n  read: 100\n  write: 100\n",
}
LEGACY_KEYS = [f"k{i:02}" for i in range(24)]
FRESH_KEYS = [f"fresh{i}" for i in range(4)]

#: One write: (writer, key, value); value None is a Delete. Writers share no key (writer = key % 2),
#: so each key's writes are sequential and its last acknowledged state is known.
writes = st.lists(st.tuples(st.integers(0, len(LEGACY_KEYS) + len(FRESH_KEYS) - 1),
                            st.one_of(st.none(), st.integers(0, 999)),
                            st.integers(0, 3)),  # turns of the loop before the write
                  min_size=1, max_size=40)


@dataclass
class Plane:
    old: JsonFileBackend
    new: SqliteBackend
    queue: ReplicationQueue
    dispatcher: Dispatcher
    stores: Stores


async def open_plane(folder: Path, mode: str, legacy: dict[str, Any]) -> Plane:
    (folder / "legacy.json").write_text(json.dumps(legacy))
    (folder / "flags.yaml").write_text(MODES[mode])
    watcher = FlagWatcher(folder / "flags.yaml", folder)
    watcher.load_initial()
    old = await JsonFileBackend.open(folder / "legacy.json")
    new = await SqliteBackend.open(folder / "new.sqlite")
    locks = KeyLocks()
    queue = ReplicationQueue(MemoryBackend(), {"old": old, "new": new}, locks)
    dispatcher = Dispatcher({Route.OLD: old, Route.NEW: new}, watcher, queue, locks, DiscrepancyLog(folder))
    stores = Stores(old, new, watcher.router, Live(locks, queue, watcher))
    return Plane(old, new, queue, dispatcher, stores)


async def run_writes_beside_a_live_migrate(mode: str, ops: list[tuple[int, int | None, int]], batch_size: int,
                                           migrate_after: int, replay_during: bool) -> None:
    legacy = {key: {"legacy": key} for key in LEGACY_KEYS}
    pool = LEGACY_KEYS + FRESH_KEYS
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        plane = await open_plane(folder, mode, legacy)
        try:
            if replay_during:
                plane.queue.start()
            acknowledged: dict[str, Any] = {}

            async def writer(me: int) -> None:
                for index, value, pause in ops:
                    if index % 2 != me:
                        continue
                    for _ in range(pause):
                        await asyncio.sleep(0)
                    key = pool[index]
                    if value is None:
                        await plane.dispatcher.delete(key, Call())
                        acknowledged[key] = None
                    else:
                        document = {"written": value}
                        await plane.dispatcher.set(key, json.dumps(document).encode(), Call())
                        acknowledged[key] = document

            async def migrating() -> int:
                for _ in range(migrate_after):
                    await asyncio.sleep(0)
                result = await migrate(plane.stores, folder / "state", batch_size=batch_size, restart=True)
                return result.error_count

            *_, errors = await asyncio.gather(writer(0), writer(1), migrating())
            assert errors == 0
            if not replay_during:
                plane.queue.start()
            assert await plane.queue.drain(10)
            expected = dict(legacy)
            for key, document in acknowledged.items():
                if document is None:
                    expected.pop(key, None)
                else:
                    expected[key] = document
            new, old = await backend_contents(plane.new), await backend_contents(plane.old)
            deleted = {key for key, document in acknowledged.items() if document is None}
            assert not deleted & set(new), "a deleted key came back in new"
            assert not deleted & set(old), "a deleted key came back in old"
            assert new == expected, "new lost or reverted an acknowledged write"
            assert old == expected, "old lost or reverted an acknowledged write"
        finally:
            await plane.queue.stop()
            await plane.dispatcher.close()
            await plane.old.close()
            await plane.new.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(sorted(MODES)), ops=writes, batch_size=st.integers(1, 9),
       migrate_after=st.integers(0, 30), replay_during=st.booleans())
def test_no_acknowledged_write_is_lost_and_no_deleted_key_returns(
        mode: str, ops: list[tuple[int, int | None, int]], batch_size: int, migrate_after: int,
        replay_during: bool) -> None:
    """Random Sets and Deletes through the data plane beside a live migrate: afterwards both stores hold
    exactly the legacy keys with every acknowledged write applied, and no deleted key."""
    asyncio.run(run_writes_beside_a_live_migrate(mode, ops, batch_size, migrate_after, replay_during))


async def test_a_page_with_a_pending_write_leaves_that_key_to_the_replayer(tmp_path: Path) -> None:
    """All writes on new, the replayer stopped: a key deleted through new (its copy to old pending) is
    not copied back into new from old, and a key set through new keeps its newer value."""
    plane = await open_plane(tmp_path, "new", {key: {"legacy": key} for key in LEGACY_KEYS})
    try:
        await plane.dispatcher.delete("k03", Call())
        await plane.dispatcher.set("k05", b'{"newer": true}', Call())
        assert await plane.old.get("k03") is not None  # its delete is still on its way to old
        result = await migrate(plane.stores, tmp_path / "state", batch_size=4, restart=True)
        assert (result.total, result.migrated, result.error_count) == (24, 22, 0)
        assert await plane.new.get("k03") is None
        assert json.loads(await plane.new.get("k05") or b"null") == {"newer": True}
        plane.queue.start()
        assert await plane.queue.drain(10)
        assert "k03" not in await backend_contents(plane.old)
    finally:
        await plane.queue.stop()
        await plane.old.close()
        await plane.new.close()


class CountingLocks(KeyLocks):
    """The real key locks, noting how many keys each page held at once."""

    def __init__(self) -> None:
        super().__init__()
        self.pages: list[int] = []

    async def acquire_many(self, keys: Iterable[str]) -> Callable[[], None]:
        held = sorted(set(keys))
        self.pages.append(len(held))
        return await super().acquire_many(held)


async def test_a_live_batch_larger_than_the_page_bound_holds_its_keys_a_page_at_a_time(tmp_path: Path) -> None:
    """--batch-size 2500 inside a proxy: no more than MAX_LIVE_PAGE keys are locked at once, and all land."""
    legacy = {f"item:{i:05}": {"i": i} for i in range(2500)}
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    (tmp_path / "flags.yaml").write_text(MODES["shadow"])
    watcher = FlagWatcher(tmp_path / "flags.yaml", tmp_path)
    watcher.load_initial()
    old = await JsonFileBackend.open(tmp_path / "legacy.json")
    new = await SqliteBackend.open(tmp_path / "new.sqlite")
    locks = CountingLocks()
    queue = ReplicationQueue(MemoryBackend(), {"old": old, "new": new}, locks)
    try:
        result = await migrate(Stores(old, new, watcher.router, Live(locks, queue, watcher)), tmp_path / "state",
                               batch_size=2500, restart=True)
        assert (result.total, result.migrated, result.error_count) == (2500, 2500, 0)
        assert max(locks.pages) == MAX_LIVE_PAGE < 2500
        assert sum(locks.pages) == 2500
        assert await backend_contents(new) == legacy
    finally:
        await old.close()
        await new.close()


async def test_a_copy_another_worker_left_pending_is_seen_in_the_shared_queue(tmp_path: Path) -> None:
    """--workers N: this worker's memory knows nothing of the other's pending delete, the shared store
    does; the page leaves that key alone instead of copying it back from old."""
    (tmp_path / "flags.yaml").write_text(MODES["new"])
    watcher = FlagWatcher(tmp_path / "flags.yaml", tmp_path)
    watcher.load_initial()
    old, new = MemoryBackend(), MemoryBackend()
    await old.set_many([(f"k{i}", b"1") for i in range(10)])
    store = await SqliteBackend.open(tmp_path / "queue.sqlite")
    locks = KeyLocks()
    other = SharedReplicationQueue(store, {"old": old, "new": new}, locks)
    here = SharedReplicationQueue(store, {"old": old, "new": new}, locks)
    try:
        async with locks.hold("k4"):  # the other worker's delete through new: intent first, then new
            await other.record("k4", "new", "old", wake=False)
        assert here.pending("k4") is None
        assert await here.pending_among(["k3", "k4"]) == {"k4"}
        result = await migrate(Stores(old, new, watcher.router, Live(locks, here, watcher)), tmp_path / "state",
                               batch_size=4, restart=True)
        assert (result.migrated, result.skipped, result.error_count) == (9, 1, 0)
        assert await new.get("k4") is None
    finally:
        await store.close()


@pytest.mark.slow
def test_the_live_migrate_bench_runs_end_to_end_in_quick_mode(tmp_path: Path) -> None:
    """bench/live_migrate.py --quick: offline, the page sweep and both served live runs, its own write
    checks passing, its figures written as JSON (the bench cannot rot unnoticed)."""
    out = tmp_path / "live.json"
    finished = subprocess.run([sys.executable, str(ROOT / "bench" / "live_migrate.py"), "--quick", "--json", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "every acknowledged write in both stores" in finished.stdout
    figures = {figure["case"]: figure for figure in json.loads(out.read_text())["figures"]}
    busy = figures["turnout migrate --live, one writer"]
    assert busy["extra"]["writes"] > 0
    assert (busy["extra"]["lost"], busy["extra"]["revived"]) == (0, 0)
    assert busy["baseline"] == "offline migrate jsonfile -> sqlite"
