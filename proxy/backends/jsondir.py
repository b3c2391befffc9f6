"""The other legacy layout: one `<encoded key>.json` file per key in one folder.

A key's file name keeps only `a-z`, `0-9`, `_` and `-` as they are and writes every other UTF-8 byte
as `%xx` (lower-case hex). So no name holds a separator, a dot or NUL, none starts with a dot (temp
and lock files do), and no name holds an upper-case letter: two keys never share a file, even on a
case-insensitive file system. A name that would be longer than MAX_NAME is replaced by
`~<sha256 of the key>.json`, with the key itself in `~<sha256>.key` beside it, made durable before
the value file appears. Listing accepts only the exact names encode_name gives, so each key is
listed once and every listed key is found by get.

Each write replaces its file atomically; concurrent writes share one fsync of the folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from proxy.backends.base import DEFAULT_PAGE_SIZE, Item, Key, Value
from proxy.backends.groupcommit import GroupCommit
from proxy.durable import StoreLock, fsync_dir, replace_file
from proxy.errors import BackendUnavailable

SUFFIX = ".json"
KEY_SUFFIX = ".key"
HASHED = "~"
LOCK_NAME = ".turnout.lock"
#: Longest encoded name kept readable; file systems allow 255 bytes with the suffix.
MAX_NAME = 200
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-")

Op = tuple[Key, Value | None]
T = TypeVar("T")


def _read_or_none(path: Path) -> Value | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def encode_name(key: Key) -> str:
    """The file name stem of key: reversible, case-insensitively unique, never a path."""
    stem = "".join(chr(b) if b in _PLAIN else f"%{b:02x}" for b in key.encode("utf-8"))
    if len(stem) > MAX_NAME:
        return HASHED + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return stem


def decode_name(stem: str) -> Key:
    """The key of a readable (not hashed) stem; raises ValueError for a name encode_name never writes.

    Only the one spelling encode_name gives is accepted: `%61` or `%4A` would otherwise list a key
    whose file is elsewhere, or one key twice.
    """
    out = bytearray()
    i = 0
    while i < len(stem):
        char = stem[i]
        if char == "%":
            out.append(int(stem[i + 1 : i + 3], 16))
            i += 3
        elif ord(char) in _PLAIN:
            out.append(ord(char))
            i += 1
        else:
            raise ValueError(f"not an encoded key: {stem!r}")
    key = out.decode("utf-8")
    if encode_name(key) != stem:
        raise ValueError(f"not an encoded key: {stem!r}")
    return key


def lock_path(folder: Path) -> Path:
    """The file whose lock says which turnout process serves the folder."""
    return folder / LOCK_NAME


class JsonDirBackend:
    type_name = "jsondir"
    ordered_scan = False  # folder order

    def __init__(self, folder: Path, lock: StoreLock) -> None:
        self.folder = folder
        self._lock = lock
        self._commits: GroupCommit[Op] = GroupCommit(self._flush, f"jsondir {folder}")
        self._closed = False

    @classmethod
    async def open(cls, folder: Path) -> JsonDirBackend:
        def prepare() -> StoreLock:
            folder.mkdir(parents=True, exist_ok=True)
            return StoreLock(lock_path(folder), f"jsondir {folder}")

        try:
            return cls(folder, await asyncio.to_thread(prepare))
        except OSError as exc:
            raise BackendUnavailable(f"jsondir {folder}: {exc.strerror or exc}") from exc

    def _value_path(self, key: Key) -> Path:
        return self.folder / (encode_name(key) + SUFFIX)

    async def _io(self, func: Callable[..., T], *args: object) -> T:
        self._check_open()
        try:
            return await asyncio.to_thread(func, *args)
        except OSError as exc:
            raise BackendUnavailable(f"jsondir {self.folder}: {exc.strerror or exc}") from exc

    async def get(self, key: Key) -> Value | None:
        return await self._io(_read_or_none, self._value_path(key))

    async def has(self, key: Key) -> bool:
        return await self._io(self._value_path(key).exists)

    async def set(self, key: Key, value: Value) -> None:
        self._check_open()
        await self._commits.submit([(key, value)])

    async def delete(self, key: Key) -> bool:
        self._check_open()
        return (await self._commits.submit([(key, None)]))[0]

    async def set_many(self, items: Sequence[Item]) -> None:
        self._check_open()
        if items:
            await self._commits.submit(list(items))

    async def _flush(self, ops: list[Op]) -> list[bool]:
        try:
            return await asyncio.to_thread(self._apply, ops)
        except OSError as exc:
            raise BackendUnavailable(f"jsondir {self.folder}: write failed: {exc.strerror or exc}") from exc

    def _apply(self, ops: list[Op]) -> list[bool]:
        existed = []
        for key, value in ops:
            stem = encode_name(key)
            path = self.folder / (stem + SUFFIX)
            existed.append(path.exists())
            if value is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                if stem.startswith(HASHED):
                    with contextlib.suppress(FileNotFoundError):
                        (self.folder / (stem + KEY_SUFFIX)).unlink()
                continue
            if stem.startswith(HASHED):
                self._write_key_file(stem, key)
            replace_file(path, value, sync_folder=False)
        fsync_dir(self.folder)  # one folder fsync makes every rename and unlink of the batch durable
        return existed

    def _write_key_file(self, stem: str, key: Key) -> None:
        """Put a hashed name's key beside it, durably, before its value file can appear."""
        key_path = self.folder / (stem + KEY_SUFFIX)
        if _read_or_none(key_path) == key.encode("utf-8"):
            return  # an overwrite: the key is already there
        # Its own folder fsync: a crash must never leave a value file whose key is lost.
        replace_file(key_path, key.encode("utf-8"))

    async def keys(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Key]]:
        # os.scandir streams the folder, so only one page of names is held at a time.
        entries = await self._io(os.scandir, self.folder)
        try:
            while page := await self._io(self._next_keys, entries, prefix, page_size):
                yield page
        finally:
            entries.close()

    def _next_keys(self, entries: Iterator[os.DirEntry[str]], prefix: str, page_size: int) -> list[Key]:
        page: list[Key] = []
        for entry in entries:
            key = self._key_of(entry.name)
            if key is not None and key.startswith(prefix):
                page.append(key)
                if len(page) >= page_size:
                    break
        return page

    def _key_of(self, name: str) -> Key | None:
        """The key whose value file is `name`, or None for anything else (temp files, the lock, sidecars)."""
        if name.startswith(".") or not name.endswith(SUFFIX):
            return None
        stem = name[: -len(SUFFIX)]
        try:
            if not stem.startswith(HASHED):
                return decode_name(stem)
            key = (self.folder / (stem + KEY_SUFFIX)).read_bytes().decode("utf-8")
        except FileNotFoundError:
            return None  # deleted since the folder was read
        except ValueError:  # UnicodeDecodeError included
            return None  # a name encode_name never gives: not a file of ours
        # A sidecar naming another key would list a key whose get looks elsewhere.
        return key if encode_name(key) == stem else None

    async def scan(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Item]]:
        async for keys in self.keys(prefix, page_size):
            page = await self._io(self._read_items, keys)
            if page:
                yield page

    async def get_many(self, keys: Sequence[Key]) -> list[Value | None]:
        return await self._io(self._read_values, keys)

    def _read_values(self, keys: Sequence[Key]) -> list[Value | None]:
        # One trip to a worker thread for the whole page, not one per key.
        return [_read_or_none(self._value_path(key)) for key in keys]

    def _read_items(self, keys: Sequence[Key]) -> list[Item]:
        # A key deleted since it was listed is left out rather than yielded without a value.
        values = self._read_values(keys)
        return [(key, value) for key, value in zip(keys, values, strict=True) if value is not None]

    def _check_open(self) -> None:
        if self._closed:
            raise BackendUnavailable(f"jsondir {self.folder}: closed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self._commits.wait_idle()
        self._lock.release()
