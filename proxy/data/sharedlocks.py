"""One writer per key at a time across the worker processes of one proxy (`turnout serve --workers N`).

Every worker writes both stores and replays the replication queue, so two workers writing one key
must take turns, or the stores could see the two writes in different orders. The turn is an fcntl
record lock on one byte of a lock file in state_dir: byte `slot(key)` of SLOTS. The kernel drops a
dead worker's locks, so a crash never leaves a key locked.

POSIX record locks belong to a process, not to a coroutine: two coroutines of one worker would
both "hold" a byte, and the first release would free it for both. So inside a worker the slot
itself is taken first, through KeyLocks, and only the coroutine holding the slot touches the
byte. Keys that share a slot (one in 65,536) take turns needlessly, which costs a wait, never a
wrong order.

A byte held by another worker is waited for in a thread (a blocking F_SETLKW), so the turn passes
the moment the other worker lets go: polling would add up to its pause to every hand-over, and a
hot key written through several workers hands over on every write. At most WAIT_THREADS writes
wait so; more queue for a thread. The kernel's deadlock check counts a worker as one owner, so it
can report a deadlock that the coroutines would resolve by themselves (this worker waits for a
byte of that one, which waits for another byte this worker's other coroutine holds, and will
release): such a wait pauses briefly and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from proxy.data.keylocks import KeyLocks
from proxy.statedir import KEY_LOCKS_FILE

#: Bytes of the lock file, one per slot; keys are spread over them by CRC-32.
SLOTS = 1 << 16
#: Threads that may wait for bytes other workers hold, at once.
WAIT_THREADS = 8
#: Pause before waiting again when the kernel saw a deadlock (seconds).
DEADLOCK_PAUSE_S = 0.001


def slot(key: str) -> int:
    """The key's byte in the lock file; the same in every process (unlike hash(), which is salted)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % SLOTS


class SharedKeyLocks(KeyLocks):
    """KeyLocks whose turns also hold across the processes that open the same lock file."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__()
        state_dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(state_dir / KEY_LOCKS_FILE, os.O_RDWR | os.O_CREAT, 0o600)  # state_dir is private
        self._waiting = ThreadPoolExecutor(WAIT_THREADS, thread_name_prefix="key-turn")

    def take_free(self, key: str) -> bool:
        return False  # the other workers' hold is known only by asking the lock file: acquire does

    async def acquire(self, key: str) -> Callable[[], None]:
        byte = slot(key)
        release_slot = await super().acquire(str(byte))
        try:
            taken = self._try(byte, wait=False)
        except BaseException:
            release_slot()
            raise
        if not taken:
            await self._wait_for(byte, release_slot)

        def release() -> None:
            if self._fd >= 0:  # once closed, the kernel has dropped every byte already
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, byte)
            release_slot()

        return release

    async def acquire_many(self, keys: Iterable[str]) -> Callable[[], None]:
        """Every key's turn (a migration's page): the slots in this worker, then their bytes, both in
        one order (the slots' names sorted), so holders of several keys never wait in a circle. Bytes
        free now are taken at once; from the first busy one on, the rest are waited for in order in
        one thread, one hop for the page rather than one per key."""
        names = sorted({str(slot(key)) for key in keys})
        release_slots = await self._take_turns(names)
        wanted = [int(name) for name in names]
        taken = 0
        try:
            while taken < len(wanted) and self._try(wanted[taken], wait=False):
                taken += 1
        except BaseException:
            self._unlock(wanted[:taken])
            release_slots()
            raise
        if taken < len(wanted):
            await self._wait_for_rest(wanted, taken, release_slots)

        def release() -> None:
            self._unlock(wanted)
            release_slots()

        return release

    async def _wait_for_rest(self, wanted: list[int], taken: int, release_slots: Callable[[], None]) -> None:
        """Take wanted[taken:] in order in a thread; when that fails or is cancelled, every byte goes
        back, and the slots only once no thread waits for a byte any more (as in _wait_for)."""
        loop = asyncio.get_running_loop()
        try:
            waited = self._waiting.submit(self._take_in_order, wanted[taken:])
        except BaseException:  # closed meanwhile
            self._unlock(wanted[:taken])
            release_slots()
            raise
        try:
            await asyncio.wrap_future(waited)
        except asyncio.CancelledError:

            def done(finished: Future[None]) -> None:  # runs in the waiting thread (or here, if it never ran)
                succeeded = not finished.cancelled() and finished.exception() is None
                self._unlock(wanted if succeeded else wanted[:taken])
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to take the slots
                    loop.call_soon_threadsafe(release_slots)

            waited.add_done_callback(done)
            raise
        except BaseException:
            self._unlock(wanted[:taken])
            release_slots()
            raise

    def _take_in_order(self, rest: list[int]) -> None:
        """Wait for each byte in turn (in the waiting thread); a wait the kernel calls a deadlock pauses
        and tries again, as the byte's holder lets go without waiting for any byte of ours (it is a
        single key's writer, or a page taking its bytes in this same order). On an error the bytes
        taken here go back."""
        done = 0
        try:
            for byte in rest:
                while not self._try(byte, wait=True):
                    time.sleep(DEADLOCK_PAUSE_S)
                done += 1
        except BaseException:
            self._unlock(rest[:done])
            raise

    def _unlock(self, held: Iterable[int]) -> None:
        if self._fd >= 0:  # once closed, the kernel has dropped every byte already
            for byte in held:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, byte)

    async def _wait_for(self, byte: int, release_slot: Callable[[], None]) -> None:
        """Wait in a thread until the byte is this worker's. When that fails or is cancelled, the slot
        goes back only once no thread waits for the byte any more: a thread that took it after its
        write gave up must let it go before another coroutine of this worker may take the slot, or
        that one would think it held a byte about to be let go."""
        loop = asyncio.get_running_loop()
        while True:
            waited = self._waiting.submit(self._try, byte, True)
            try:
                taken = await asyncio.wrap_future(waited)
            except asyncio.CancelledError:
                waited.add_done_callback(self._give_back(byte, release_slot, loop))
                raise
            except BaseException:
                release_slot()
                raise
            if taken:
                return
            try:
                await asyncio.sleep(DEADLOCK_PAUSE_S)
            except BaseException:
                release_slot()
                raise

    def _try(self, byte: int, wait: bool) -> bool:
        """Take the byte (waiting for it when `wait`); False when another worker holds it (not
        waiting) or when the kernel called the wait a deadlock."""
        flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        while True:
            try:
                fcntl.lockf(self._fd, flags, 1, byte)
                return True
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EDEADLK):
                    return False
                raise

    def _give_back(self, byte: int, release_slot: Callable[[], None],
                   loop: asyncio.AbstractEventLoop) -> Callable[[Future[bool]], None]:
        """The end of a wait whose write gave up: let the byte go if the thread took it, then the slot."""

        def done(waited: Future[bool]) -> None:  # runs in the waiting thread
            if not waited.cancelled() and waited.exception() is None and waited.result() and self._fd >= 0:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, byte)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to take the slot
                loop.call_soon_threadsafe(release_slot)

        return done

    def close(self) -> None:
        self._waiting.shutdown(wait=False, cancel_futures=True)
        if self._fd >= 0:
            os.close(self._fd)  # drops every byte this process held
            self._fd = -1
