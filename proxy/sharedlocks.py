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

A byte held by another worker is polled for, with a growing pause, rather than waited for in a
thread: a blocking wait would hold a thread per waiting write, and the kernel's deadlock check
counts a worker as one owner, so it reports deadlocks that the coroutines would resolve.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import zlib
from collections.abc import Callable
from pathlib import Path

from proxy.keylocks import KeyLocks

LOCK_FILE = "keys.lock"
#: Bytes of the lock file, one per slot; keys are spread over them by CRC-32.
SLOTS = 1 << 16
#: Pauses between tries for a slot another worker holds: first and ceiling (seconds).
RETRY_FIRST_S = 0.0005
RETRY_MAX_S = 0.008


def slot(key: str) -> int:
    """The key's byte in the lock file; the same in every process (unlike hash(), which is salted)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % SLOTS


class SharedKeyLocks(KeyLocks):
    """KeyLocks whose turns also hold across the processes that open the same lock file."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__()
        state_dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)

    async def acquire(self, key: str) -> Callable[[], None]:
        byte = slot(key)
        release_slot = await super().acquire(str(byte))
        try:
            await self._lock_byte(byte)
        except BaseException:
            release_slot()
            raise

        def release() -> None:
            if self._fd >= 0:  # once closed, the kernel has dropped every byte already
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, byte)
            release_slot()

        return release

    async def _lock_byte(self, byte: int) -> None:
        pause = 0.0
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
                return
            except OSError as exc:  # EAGAIN or EACCES: another worker holds it
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            await asyncio.sleep(pause)
            pause = min(RETRY_MAX_S, pause * 2 if pause else RETRY_FIRST_S)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # drops every byte this process held
            self._fd = -1
