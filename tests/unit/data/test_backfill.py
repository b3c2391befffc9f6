"""The backfill rule: a key the backfill has not reached, and no write touched, missing in the new
store is not migrated yet (counted apart); every other difference stays a discrepancy."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy import statedir
from proxy.backends.memory import MemoryBackend
from proxy.data.backfill import CURSOR_TTL_S, SLOTS, TOUCHED_FILE, BackfillRule, Cursor, TouchedKeys
from proxy.data.discrepancies import DiscrepancyLog, report_from_log
from proxy.data.dispatcher import Call, Dispatcher
from proxy.data.keylocks import KeyLocks
from proxy.migration.migrate import migrate
from proxy.migration.stores import Stores
from proxy.replication.local import ReplicationQueue
from proxy.routing.flags import Flags
from proxy.routing.router import Op, Route, Router
from proxy.statedir import CHECKPOINT_FILE

SHADOW = Flags(use_new_storage=True, shadow_mode_enabled=True)  # reads and writes on old, new in shadow


@dataclass
class Routes:
    """What the flag watcher gives the dispatcher: the router in force and state_dir."""

    router: Router
    state_dir: Path


class Unordered(MemoryBackend):
    """A real in-memory store whose scan order the cursor cannot follow (as Redis's)."""

    ordered_scan = False


class LateStore(MemoryBackend):
    """A real in-memory store whose reads answer only once `answer` is set (a slow shadow read)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()

    async def get(self, key: str) -> bytes | None:
        await self.answer.wait()
        return await super().get(key)


def build(state: Path, flags: Flags = SHADOW, old: MemoryBackend | None = None, new: MemoryBackend | None = None
          ) -> tuple[Dispatcher, MemoryBackend, MemoryBackend, Routes]:
    old, new = old or MemoryBackend(), new or MemoryBackend()
    locks = KeyLocks()
    queue = ReplicationQueue(MemoryBackend(), {"old": old, "new": new}, locks)
    routes = Routes(Router(flags), state)
    log = DiscrepancyLog(state)
    return Dispatcher({Route.OLD: old, Route.NEW: new}, routes, queue, locks, log), old, new, routes


def backfill_at(state: Path, last_key: str | None, **extra: object) -> None:
    """The checkpoint of a live migrate from old whose cursor is at last_key."""
    statedir.write_json(state / CHECKPOINT_FILE, {"source": "old", "last_key": last_key, "complete": False, **extra})


async def seed_old(old: MemoryBackend, keys: list[str]) -> None:
    for key in keys:
        await old.set(key, b'{"v": 1}')


async def drain(dispatcher: Dispatcher) -> None:
    """Let comparisons still waiting for their shadow finish."""
    await dispatcher.close()


def kinds(dispatcher: Dispatcher) -> dict[str, int]:
    return dict(dispatcher.discrepancies.report.by_kind)


async def test_keys_past_the_cursor_missing_in_new_are_not_migrated_yet(tmp_path: Path) -> None:
    """A Get, a Has and a Delete of keys after the cursor, untouched, record nothing and are counted apart."""
    dispatcher, old, _, _ = build(tmp_path)
    await seed_old(old, ["k1", "k7", "k8", "k9"])
    backfill_at(tmp_path, "k5")
    assert await dispatcher.get("k7", Call()) == b'{"v": 1}'
    assert await dispatcher.has("k8", Call())
    assert await dispatcher.delete("k9", Call())
    await drain(dispatcher)
    report = dispatcher.discrepancies.report
    assert kinds(dispatcher) == {}
    assert dict(report.not_migrated) == {"get": 1, "has": 1, "delete": 1}
    assert sum(report.compared.values()) == 0  # not in the rate's denominator either
    assert report.rate == 0.0


async def test_a_slow_shadow_read_is_judged_by_the_cursor_of_when_it_was_issued(tmp_path: Path) -> None:
    """A shadow read issued before the backfill reached its key, which finds it absent only after the
    cursor moved past the key, is the backfill's lag: not migrated, not a discrepancy."""
    late = LateStore()
    dispatcher, old, _, _ = build(tmp_path, new=late)
    await seed_old(old, ["k7"])
    backfill_at(tmp_path, "k5")
    assert await dispatcher.get("k7", Call()) == b'{"v": 1}'  # the primary answers; the shadow waits
    backfill_at(tmp_path, "k9")  # the backfill moves past k7 (the new store still lacks it, as read)
    await asyncio.sleep(CURSOR_TTL_S + 0.1)  # so that a cursor asked for now is read again
    late.answer.set()
    await drain(dispatcher)
    assert kinds(dispatcher) == {}
    assert dict(dispatcher.discrepancies.report.not_migrated) == {"get": 1}


async def test_a_key_the_backfill_reached_missing_in_new_is_a_discrepancy(tmp_path: Path) -> None:
    """At or before the cursor, the new store should hold the key: its absence is missing_in_shadow."""
    dispatcher, old, _, _ = build(tmp_path)
    await seed_old(old, ["k1", "k5"])
    backfill_at(tmp_path, "k5")
    await dispatcher.get("k1", Call())
    await dispatcher.get("k5", Call())
    await drain(dispatcher)
    assert kinds(dispatcher) == {"missing_in_shadow": 2}
    assert not dispatcher.discrepancies.report.not_migrated


async def test_a_key_written_through_the_proxy_then_lost_from_new_is_a_discrepancy(tmp_path: Path) -> None:
    """Past the cursor but touched: the write reached new, so new lacking it is real, for a read and a Delete."""
    dispatcher, _old, new, _ = build(tmp_path)
    backfill_at(tmp_path, "a")
    await dispatcher.set("k7", b'{"v": 2}', Call())
    await dispatcher.set("k8", b'{"v": 2}', Call())
    assert await new.get("k7") == b'{"v": 2}'  # the shadow write
    await new.delete("k7")  # behind the proxy's back
    await new.delete("k8")
    await dispatcher.get("k7", Call())
    assert await dispatcher.delete("k8", Call())
    await drain(dispatcher)
    assert kinds(dispatcher) == {"missing_in_shadow": 2}
    assert dict(dispatcher.discrepancies.report.by_op) == {"get": 1, "delete": 1}


async def test_a_value_that_differs_past_the_cursor_is_still_a_discrepancy(tmp_path: Path) -> None:
    """The rule explains absence only: a different document in new is value_mismatch wherever the cursor is."""
    dispatcher, old, new, _ = build(tmp_path)
    await seed_old(old, ["k9"])
    await new.set("k9", b'{"v": 3}')
    backfill_at(tmp_path, "a")
    await dispatcher.get("k9", Call())
    await drain(dispatcher)
    assert kinds(dispatcher) == {"value_mismatch": 1}


async def test_a_key_only_new_holds_is_extra_in_shadow_past_the_cursor(tmp_path: Path) -> None:
    """What new holds and old lacks is no backfill lag: extra_in_shadow stays a discrepancy."""
    dispatcher, _, new, _ = build(tmp_path)
    await new.set("k9", b"1")
    backfill_at(tmp_path, "a")
    assert await dispatcher.get("k9", Call()) is None
    await drain(dispatcher)
    assert kinds(dispatcher) == {"extra_in_shadow": 1}


async def test_without_a_backfill_every_missing_key_is_a_discrepancy(tmp_path: Path) -> None:
    """No checkpoint: no backfill is on its way to the key, so its absence from new is reported."""
    dispatcher, old, _, _ = build(tmp_path)
    await seed_old(old, ["k9"])
    await dispatcher.get("k9", Call())
    await drain(dispatcher)
    assert kinds(dispatcher) == {"missing_in_shadow": 1}


@pytest.mark.parametrize("checkpoint", [{"source": "old", "last_key": None, "complete": True},
                                        {"source": "old", "last_key": None, "complete": False, "finished": 1.0}])
async def test_once_a_backfill_finished_every_missing_key_is_a_discrepancy(tmp_path: Path,
                                                                           checkpoint: dict[str, object]) -> None:
    """A run that ended (complete, or with errors) reached every key."""
    dispatcher, old, _, _ = build(tmp_path)
    await seed_old(old, ["zzz"])
    statedir.write_json(tmp_path / CHECKPOINT_FILE, checkpoint)
    await dispatcher.get("zzz", Call())
    await drain(dispatcher)
    assert kinds(dispatcher) == {"missing_in_shadow": 1}


async def test_a_shadow_that_is_not_the_backfill_target_is_not_explained(tmp_path: Path) -> None:
    """Reads served by new with old in shadow: old lacking a key is no lag of a backfill into new."""
    reads_on_new = Flags(use_new_storage=True, shadow_mode_enabled=True, read_percentage=100)
    dispatcher, _, new, _ = build(tmp_path, reads_on_new)
    await new.set("k9", b"1")
    backfill_at(tmp_path, "a")
    await dispatcher.get("k9", Call())
    await drain(dispatcher)
    assert kinds(dispatcher) == {"missing_in_shadow": 1}


async def test_an_unordered_source_explains_keys_only_before_its_first_page(tmp_path: Path) -> None:
    """A cursor into an unordered scan says nothing of a key: once it moved, every key counts as reached."""
    dispatcher, old, _, _ = build(tmp_path, old=Unordered())
    await seed_old(old, ["k9"])
    backfill_at(tmp_path, None)
    await dispatcher.get("k9", Call())
    dispatcher.backfill._read_at = None  # read the checkpoint again now, not after CURSOR_TTL_S
    backfill_at(tmp_path, "k0")
    await dispatcher.get("k9", Call())
    await drain(dispatcher)
    assert dict(dispatcher.discrepancies.report.not_migrated) == {"get": 1}
    assert kinds(dispatcher) == {"missing_in_shadow": 1}


async def test_not_migrated_counts_reach_the_log_apart_from_the_rate(tmp_path: Path) -> None:
    """The log carries the count, so `turnout discrepancies` shows it with the proxy stopped, outside the rate."""
    dispatcher, old, _, _ = build(tmp_path)
    await seed_old(old, ["k1", "k8", "k9"])
    await dispatcher.set("k2", b"1", Call())
    backfill_at(tmp_path, "k5")
    await asyncio.sleep(CURSOR_TTL_S + 0.05)  # the set's shadow call read the cursor before it was written
    await dispatcher.get("k1", Call())  # reached: a discrepancy
    await dispatcher.get("k8", Call())
    await dispatcher.get("k9", Call())
    await dispatcher.get("k2", Call())  # agrees
    await drain(dispatcher)
    await dispatcher.discrepancies.flush()
    report = report_from_log(tmp_path)
    assert report.to_document()["not_migrated"] == 2
    assert dict(report.not_migrated) == {"get": 2}
    assert dict(report.compared) == {"set": 1, "get": 2}
    assert report.total == 1
    assert report.rate == 1 / 3


def test_the_cursor_of_each_checkpoint() -> None:
    """Started, in progress at a key, finished: which keys each has reached, ordered or not."""
    assert Cursor.of(None).reached("a", ordered=True)  # no backfill: nothing is explained
    running = Cursor.of({"source": "old", "last_key": "m", "complete": False})
    assert running.reached("a", True)
    assert running.reached("m", True)
    assert not running.reached("m0", True)
    assert not running.reached("z", True)
    assert running.reached("z", False)
    fresh = Cursor.of({"source": "old", "last_key": None, "complete": False})
    assert not fresh.reached("a", True)
    assert not fresh.reached("a", False)
    assert Cursor.of({"source": "old", "complete": True}).reached("z", True)
    assert Cursor.of({"source": "new", "last_key": "m"}).source is Route.NEW
    assert Cursor.of(["not", "a", "checkpoint"]).reached("z", True)


def test_a_touch_in_another_process_is_seen_at_once(tmp_path: Path) -> None:
    """The table is shared memory: a write marked by another worker's process counts here without a reread."""
    here = TouchedKeys(tmp_path / TOUCHED_FILE)
    assert here.writes("user:1") == 0
    code = ("import sys; from pathlib import Path; from proxy.data.backfill import TouchedKeys;"
            "t = TouchedKeys(Path(sys.argv[1])); t.touch('user:1'); t.touch('user:1'); t.close()")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / TOUCHED_FILE)], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[3])
    assert here.writes("user:1") == 2
    assert here.writes("user:2") == 0
    here.close()
    again = TouchedKeys(tmp_path / TOUCHED_FILE)  # and a restart keeps it
    assert again.writes("user:1") == 2
    assert (tmp_path / TOUCHED_FILE).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / TOUCHED_FILE).stat().st_size == SLOTS
    again.close()


def test_counters_saturate_and_collisions_only_add() -> None:
    """A key written again and again stays touched (counted up to 2); another key's writes never lower it."""
    table = TouchedKeys()
    table.touch("hot")
    assert table.writes("hot") == 1
    for _ in range(300):
        table.touch("hot")
    assert table.writes("hot") == 2
    for n in range(10_000):
        table.touch(f"other:{n}")
    assert table.writes("hot") == 2
    table.touch("\udc80 lone surrogate")  # never from the wire, and still no error
    assert table.writes("\udc80 lone surrogate") >= 1
    untouched = [f"never:{n}" for n in range(10_000)]
    looks_touched = sum(1 for key in untouched if table.writes(key))
    assert looks_touched < 100  # 10 001 keys in 4 Mi slots: a collision of both slots is rare
    assert 0 < table.fill() < 0.01


def test_a_rule_without_state_explains_nothing(tmp_path: Path) -> None:
    """A dispatcher without state_dir (a bench) still marks writes but never explains a difference."""
    rule = BackfillRule(None, {Route.OLD: MemoryBackend(), Route.NEW: MemoryBackend()})
    backfill_at(tmp_path, "a")
    assert not rule.not_migrated(Op.GET, "k", Router(SHADOW).route(Op.GET, "k"))
    rule.touch("k")
    assert rule.touched.writes("k") == 1


async def test_a_listing_that_lacks_only_keys_not_reached_is_not_migrated(tmp_path: Path) -> None:
    """Keys: missing keys all past the cursor and untouched explain the listing; one reached key does not."""
    dispatcher, old, new, _ = build(tmp_path)
    await seed_old(old, ["k1", "k7", "k8"])
    await new.set("k1", b'{"v": 1}')
    backfill_at(tmp_path, "k5")
    assert [key async for page in dispatcher.keys("", Call()) for key in page] == ["k1", "k7", "k8"]
    await new.delete("k1")  # reached, now lost from new
    assert [key async for page in dispatcher.keys("", Call()) for key in page] == ["k1", "k7", "k8"]
    await drain(dispatcher)
    assert dict(dispatcher.discrepancies.report.not_migrated) == {"keys": 1}
    assert kinds(dispatcher) == {"missing_in_shadow": 1}


async def test_a_migrate_publishes_its_cursor_as_it_starts(tmp_path: Path) -> None:
    """Before its first page is copied, the checkpoint says a backfill has started and reached nothing, even
    over the checkpoint of an earlier complete run (so keys are not taken as reached meanwhile)."""
    old, new = MemoryBackend(), MemoryBackend()
    await seed_old(old, [f"k{n:03}" for n in range(100)])
    statedir.write_json(tmp_path / CHECKPOINT_FILE, {"source": "old", "last_key": None, "complete": True})
    run = asyncio.create_task(migrate(Stores(old, new, Router(SHADOW)), tmp_path, batch_size=10, rate=20.0,
                                      restart=True))
    checkpoint: dict[str, Any] = {}
    for _ in range(1000):  # turns of the loop, not time: the run goes on until its throttle first waits
        await asyncio.sleep(0)
        checkpoint = statedir.read_json(tmp_path / CHECKPOINT_FILE) or {}
        if not checkpoint.get("complete"):
            break
    assert (checkpoint["last_key"], checkpoint["complete"]) == (None, False)
    assert not Cursor.of(checkpoint).reached("k000", ordered=True)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
