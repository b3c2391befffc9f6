"""Key turns across processes: two workers never change one key at the same time."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from proxy.sharedlocks import SLOTS, SharedKeyLocks, slot

# A worker stand-in: several coroutines each add 1 to a counter file, read-modify-write with a
# yield in between, under the key's turn (or not, with "free"). Lost updates show as a low total.
INCREMENTER = """
import asyncio, os, sys
from pathlib import Path
from proxy.sharedlocks import SharedKeyLocks

state_dir, counter, rounds, mode = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
locks = SharedKeyLocks(state_dir)

async def add_one() -> None:
    value = int(counter.read_text())
    await asyncio.sleep(0.0005)
    temp = counter.with_name(f"counter.{os.getpid()}")
    temp.write_text(str(value + 1))
    os.replace(temp, counter)  # whole, so a reader never sees it half-written

async def coroutine() -> None:
    for _ in range(rounds):
        if mode == "free":
            await add_one()
        else:
            async with locks.hold("counter"):
                await add_one()

async def main() -> None:
    await asyncio.gather(*(coroutine() for _ in range(4)))

asyncio.run(main())
"""


def run_workers(tmp_path: Path, mode: str, workers: int = 3, rounds: int = 40) -> int:
    counter = tmp_path / "counter"
    counter.write_text("0")
    processes = [
        subprocess.Popen([sys.executable, "-c", INCREMENTER, str(tmp_path), str(counter), str(rounds), mode])
        for _ in range(workers)
    ]
    codes = [process.wait(60) for process in processes]
    assert codes == [0] * workers
    return int(counter.read_text())


def test_workers_take_turns_on_a_key(tmp_path: Path) -> None:
    assert run_workers(tmp_path, "locked") == 3 * 4 * 40


def test_without_turns_the_same_workers_lose_updates(tmp_path: Path) -> None:
    """The control: the workload above does lose updates when nothing orders it."""
    assert run_workers(tmp_path, "free") < 3 * 4 * 40


async def test_two_keys_in_one_slot_take_turns_inside_a_worker(tmp_path: Path) -> None:
    """Record locks belong to the process: the slot is taken in the process first, so releasing one
    key never frees the byte while another coroutine of the process still holds a key of that slot."""
    first = "key-0"
    second = next(f"key-{i}" for i in range(1, 10**7) if slot(f"key-{i}") == slot(first))
    locks = SharedKeyLocks(tmp_path)
    try:
        release_first = await locks.acquire(first)
        waiting = asyncio.ensure_future(locks.acquire(second))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        release_first()
        release_second = await asyncio.wait_for(waiting, 1)
        release_second()
    finally:
        locks.close()


def test_slots_are_the_same_in_every_process() -> None:
    """slot() must not depend on Python's per-process string hash salt."""
    script = "from proxy.sharedlocks import slot; print(slot('session:42'))"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(other.stdout) == slot("session:42")
    assert 0 <= slot("session:42") < SLOTS
