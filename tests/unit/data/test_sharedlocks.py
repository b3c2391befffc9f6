"""Key turns across processes: two workers never change one key at the same time."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.data.sharedlocks import SLOTS, SharedKeyLocks, slot

# A worker stand-in: several coroutines each add 1 to a counter file, read-modify-write with a
# yield in between, under the key's turn (or not, with "free"). Lost updates show as a low total.
INCREMENTER = """
import asyncio, os, sys
from pathlib import Path
from proxy.data.sharedlocks import SharedKeyLocks

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
    script = "from proxy.data.sharedlocks import slot; print(slot('session:42'))"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(other.stdout) == slot("session:42")
    assert 0 <= slot("session:42") < SLOTS


# Holds one key's turn until its stdin closes, saying "held" once it has it.
HOLDER = """
import asyncio, sys
from pathlib import Path
from proxy.data.sharedlocks import SharedKeyLocks

async def main() -> None:
    locks = SharedKeyLocks(Path(sys.argv[1]))
    async with locks.hold(sys.argv[2]):
        print("held", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def holder(state_dir: Path, key: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(state_dir), key],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "held\n"
    return process


def let_go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(10) == 0
    if process.stdout is not None:
        process.stdout.close()


async def test_a_turn_given_up_while_another_worker_holds_it_is_not_left_behind(tmp_path: Path) -> None:
    """A write cancelled while it waits for a key another worker holds: the next write of the key in
    this worker still waits its turn, gets it once the other worker lets go, and then holds it."""
    locks = SharedKeyLocks(tmp_path)
    other = holder(tmp_path, "hot")
    try:
        given_up = asyncio.ensure_future(locks.acquire("hot"))
        await asyncio.sleep(0.1)
        given_up.cancel()
        with pytest.raises(asyncio.CancelledError):
            await given_up
        next_write = asyncio.ensure_future(locks.acquire("hot"))
        await asyncio.sleep(0.2)
        assert not next_write.done()  # the other worker still holds the key
        await asyncio.to_thread(let_go, other)
        release = await asyncio.wait_for(next_write, 5)
        # Held here now: a third worker cannot take it until it is released.
        third = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "hot"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert third.stdout is not None
        said = asyncio.ensure_future(asyncio.to_thread(third.stdout.readline))
        await asyncio.sleep(0.5)
        assert not said.done()
        release()
        assert await asyncio.wait_for(said, 5) == "held\n"
        await asyncio.to_thread(let_go, third)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        for stream in (other.stdin, other.stdout):
            if stream is not None:
                stream.close()
        locks.close()
