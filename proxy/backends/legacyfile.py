"""The legacy file's format: one JSON object, each member a key, read and written as the old
application does, and the signature that tells when the file changed on disk.

Loading follows JSON parsers: a repeated member name keeps its last value. A value is compacted
on load unless Python would change it (a number beyond a float, like 1e400, or beyond its int
conversion limit); then every value keeps the text the old application wrote.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from proxy.backends.base import Key, Value
from proxy.durable import create_temp, fsync_dir, replace_file, temp_name
from proxy.errors import BackendUnavailable

Signature = tuple[int, int, int]


def signature(stat: os.stat_result) -> Signature:
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


# Built once: json.dumps with any non-default argument builds a new encoder per call, which costs
# several times the encoding of a short key or value (and a load or rewrite does it per member).
# allow_nan keeps what an old writer may have put there (Python's json writes NaN by default).
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True).encode
_encode_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=True).encode


def compact(document: object) -> bytes:
    """Compact UTF-8 JSON for a value, or a member name (a JSON string like any other)."""
    try:
        return _encode(document).encode()
    except UnicodeEncodeError:
        # A lone surrogate (`"\ud800"` in the file) has no UTF-8 form: keep it escaped, as written.
        return _encode_ascii(document).encode()


class _BeyondPython(Exception):
    """The file holds a number Python's json cannot carry unchanged (1e400, an int of 5000 digits)."""


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise _BeyondPython(text)
    return number


def _bounded_int(text: str) -> int:
    if len(text) > _INT_DIGITS:
        raise _BeyondPython(text)
    return int(text)


_INT_DIGITS = 4000  # below Python's limit on int <-> str conversion (4300 digits)
_SPACE = re.compile(r"[ \t\n\r]*")


def parse_store(raw: bytes, path: Path) -> dict[Key, Value]:
    """The members of the file's object; a repeated member name keeps its last value, as JSON parsers do."""
    try:
        try:
            document = json.loads(raw, parse_float=_finite_float, parse_int=_bounded_int)
        except _BeyondPython:
            return raw_members(raw.decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError included
        raise BackendUnavailable(f"jsonfile {path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise BackendUnavailable(f"jsonfile {path}: the top level must be a JSON object")
    return {key: compact(value) for key, value in document.items()}


def compact_value(raw: Value) -> Value:
    """A document as parse_store keeps it (compacted), or its bytes when Python cannot carry it unchanged."""
    try:
        return compact(json.loads(raw, parse_float=_finite_float, parse_int=_bounded_int))
    except (_BeyondPython, ValueError, RecursionError):
        return raw


def raw_members(text: str) -> dict[Key, Value]:
    """The object's members with each value's text exactly as written, for numbers a float would change.

    Slower than json.loads (a Python loop per member), so only taken when the fast path cannot.
    """
    # Numbers parse as their text: only the extent of each value matters here, and this way no
    # number is too large to scan.
    decoder = json.JSONDecoder(parse_float=str, parse_int=str)

    def skip(i: int) -> int:
        match = _SPACE.match(text, i)
        assert match is not None  # `*` matches the empty string
        return match.end()

    def expect(char: str, i: int) -> int:
        if text[i : i + 1] != char:
            raise ValueError(f"expected {char!r} at char {i}")
        return skip(i + 1)

    data: dict[Key, Value] = {}
    i = expect("{", skip(0))
    if text[i : i + 1] == "}":
        i = skip(i + 1)
    else:
        while True:
            if text[i : i + 1] != '"':
                raise ValueError(f"expected a member name at char {i}")
            key, i = decoder.raw_decode(text, i)
            i = expect(":", skip(i))
            _, end = decoder.raw_decode(text, i)
            data[key] = text[i:end].encode()
            i = skip(end)
            if text[i : i + 1] == "}":
                i = skip(i + 1)
                break
            i = expect(",", i)
    if i != len(text):
        raise ValueError(f"extra data at char {i}")
    return data


def read_store(path: Path) -> tuple[dict[Key, Value], Signature]:
    """The file's members and the signature of the very file read.

    The signature comes from the open descriptor, not a second stat: the old application may
    replace the file between the two, and we must never pair old contents with a new signature.
    """
    with path.open("rb") as file:
        sig = signature(os.fstat(file.fileno()))
        raw = file.read()
    return parse_store(raw, path), sig


def create_empty_store(path: Path) -> None:
    """Create path holding `{}`, whole and durable, but never over a file that appeared meanwhile.

    A link, unlike a rename, fails when the name exists: the old application may be creating its
    file at this very moment, and its contents win.
    """
    staged = temp_name(path).with_suffix(".new")
    replace_file(staged, b"{}\n", sync_folder=False)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(staged, path)
    finally:
        staged.unlink()
    fsync_dir(path.parent)


def render_store(data: dict[Key, Value]) -> bytes:
    parts = [b"{"]
    for i, (key, value) in enumerate(data.items()):
        if i:
            parts.append(b",\n")
        parts.append(compact(key))
        parts.append(b":")
        parts.append(value)
    parts.append(b"}\n")
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Staged:
    """A rewrite written and fsynced beside the file, not yet renamed over it."""

    temp: Path
    sig: Signature


class MemberNames:
    """Renders the file as render_store does, with each member's `,\\n"name":` encoded once per key
    and kept: a rewrite of a big file is then list slicing and writev, work done in C (outside the
    GIL for the writes), instead of a JSON encoding per member that stalls the event loop's thread.

    Used from one thread at a time (a store's rewrites never overlap)."""

    def __init__(self) -> None:
        self._cache: dict[Key, bytes] = {}

    def parts(self, data: dict[Key, Value]) -> list[bytes]:
        """The file's bytes as a list of pieces, in order (joined, they are render_store(data))."""
        cache = self._cache
        if len(cache) > 2 * len(data) + 1024:
            cache.clear()  # mostly keys deleted long ago
        try:
            names = [cache[key] for key in data]
        except KeyError:
            names = [cache.get(key) or cache.setdefault(key, b",\n" + compact(key) + b":") for key in data]
        if not names:
            return [b"{}\n"]
        pieces: list[bytes] = [b""] * (2 * len(names) + 2)
        pieces[0], pieces[-1] = b"{", b"}\n"
        pieces[1:-1:2] = names
        pieces[2:-1:2] = list(data.values())
        pieces[1] = names[0][2:]  # no separator before the first member
        return pieces


#: writev takes at most this many buffers per call (IOV_MAX is 1024 on Linux).
_IOV_MAX = 1024


def _write_pieces(fd: int, pieces: list[bytes]) -> None:
    for start in range(0, len(pieces), _IOV_MAX):
        chunk = pieces[start : start + _IOV_MAX]
        written = os.writev(fd, chunk)
        if written < sum(len(piece) for piece in chunk):  # a short write: finish this chunk plainly
            view = memoryview(b"".join(chunk))[written:]
            while view:
                view = view[os.write(fd, view) :]


def stage_store(path: Path, pieces: list[bytes]) -> Staged:
    """Write the pieces to path's temporary sibling and fsync it; its signature is the file's once
    renamed (a rename keeps the inode, mtime and size), so a journal can name it before the rename."""
    temp = temp_name(path)
    fd = create_temp(temp)
    try:
        _write_pieces(fd, pieces)
        os.fsync(fd)
        sig = signature(os.fstat(fd))
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    os.close(fd)
    return Staged(temp, sig)


def commit_staged(path: Path, staged: Staged, expected: Signature) -> bool:
    """Rename the staged rewrite over path, unless path changed since it was `expected` (the old
    application wrote it meanwhile: its change must be read first); then the rewrite is dropped and
    False returned. A path deleted under us is put back whole."""
    try:
        current: Signature | None = signature(path.stat())
    except FileNotFoundError:
        current = None
    if current is not None and current != expected:
        discard_staged(staged)
        return False
    try:
        os.replace(staged.temp, path)
    except BaseException:
        discard_staged(staged)
        raise
    fsync_dir(path.parent)
    return True


def discard_staged(staged: Staged) -> None:
    with contextlib.suppress(OSError):
        staged.temp.unlink()
