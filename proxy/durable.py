"""Durable file primitives: atomic replace, folder fsync, and the advisory lock of a store.

A reader of a file replaced here never sees it torn, and once the call returns the new contents
survive a crash (temp file, fsync, rename, fsync of the folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable
from pathlib import Path

from proxy.errors import StoreLocked


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A temporary sibling of path, unique to this process, hidden from listings by its dot."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


#: A temporary file is always a new file of ours: never opened through a link or over a planted file.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def create_temp(temp: Path, mode: int = 0o644) -> int:
    """Create temp exclusively and return its descriptor; whatever held the name before (a file left
    by a crash, a planted symlink) is unlinked, never followed or truncated."""
    try:
        return os.open(temp, _NEW_FILE, mode)
    except FileExistsError:
        temp.unlink()  # removes the name itself: a link's target is left alone
        return os.open(temp, _NEW_FILE, mode)


def replace_file(path: Path, data: bytes, sync_folder: bool = True, mode: int | None = None) -> os.stat_result:
    """Atomically replace path with data; returns the new file's stat.

    With `mode` the file gets exactly that mode, whatever the umask (state_dir's private files);
    without it, 0644 under the umask, as the legacy stores' files have always been created."""
    temp = temp_name(path)
    fd = create_temp(temp, 0o644 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        stat = os.fstat(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    os.close(fd)
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    if sync_folder:
        fsync_dir(path.parent)
    return stat


def remove_file(path: Path, sync_folder: bool = True) -> bool:
    """Remove path durably; False when it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    if sync_folder:
        fsync_dir(path.parent)
    return True


def sibling_lock(path: Path) -> Path:
    """The lock file of a one-file store: beside it, named after it."""
    return path.with_name(path.name + ".lock")


#: Lock files whose flock this process shares with its supervisor (`turnout serve --workers N`).
_inherited: set[Path] = set()


def inherit_store_locks(paths: Iterable[Path]) -> None:
    """Say that these lock files are already held for this process, by the supervisor of its workers.

    flock belongs to an open file, and the workers inherit the supervisor's: the stores stay locked
    against any other turnout process for as long as one of them lives, and open here without a
    second lock, which would only conflict with the first.
    """
    _inherited.update(path.absolute() for path in paths)


class StoreLock:
    """An exclusive advisory lock (flock) on a lock file, so two turnout processes never write one store.

    The kernel drops it when the process dies, so a crash never leaves a store locked.
    """

    def __init__(self, lock_path: Path, what: str) -> None:
        self.path = lock_path
        if lock_path.absolute() in _inherited:
            self._fd: int | None = None
            return
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            message = f"{what} is locked by another turnout process (pid {holder}); lock file {lock_path}"
            raise StoreLocked(message) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def fileno(self) -> int:
        """The locked file, for a supervisor to hand to its workers (-1 when held through one)."""
        return -1 if self._fd is None else self._fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
