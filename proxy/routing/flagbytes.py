"""Reading a flag file's bytes, safely: a regular file (a link to one is followed) of at most
MAX_FLAG_FILE_BYTES; a FIFO, a device or anything bigger is refused before it is read, so a link to
/dev/zero or a FIFO can neither exhaust memory nor hold the watcher. Parsing them is flagfile's.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from proxy.errors import ConfigError

#: The largest flag file read. Kubernetes caps a whole ConfigMap at 1 MiB, so a flag file mounted
#: from one is never bigger, and a real one (a few dozen lines, a few hundred patterns at most) is
#: far smaller; past it, reading and parsing would only cost memory and time, and a link to
#: /dev/zero would never end.
MAX_FLAG_FILE_BYTES = 1 << 20


def read_flag_file(path: Path) -> bytes:
    """The flag file's bytes; ConfigError when it cannot be read, is not a regular file (following
    links, as the ConfigMap layout needs) or is larger than MAX_FLAG_FILE_BYTES."""
    try:
        _refuse_special(path, os.stat(path))  # before opening: opening a device may itself do something
        # O_NONBLOCK: should a FIFO take the file's place in between, opening it cannot wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read flag file: {exc.strerror or exc}") from exc
    try:
        # What counts is the file actually opened, whatever the path points at by now.
        _refuse_special(path, os.fstat(fd))
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, MAX_FLAG_FILE_BYTES + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FLAG_FILE_BYTES:
                raise ConfigError(_too_large(path))  # grew while being read
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read flag file: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return b"".join(chunks)


def _refuse_special(path: Path, status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise ConfigError(f"{path}: not a regular file ({_kind(status.st_mode)}); a flag file must be one")
    if status.st_size > MAX_FLAG_FILE_BYTES:
        raise ConfigError(_too_large(path, status.st_size))


def _too_large(path: Path, size: int | None = None) -> str:
    shown = "" if size is None else f" ({size} bytes)"
    return f"{path}: larger than {MAX_FLAG_FILE_BYTES} bytes{shown}, the most a flag file may be"


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a file")
