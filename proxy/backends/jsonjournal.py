"""The journal beside a legacy JSON file (`<file>.journal`): writes are durable once appended here, and
the file is rewritten whole from memory now and then (proxy/backends/jsonfile.py decides when).

The journal is a run of records: `TJ`, a kind byte, a sequence number, the wall-clock time it was
written, the lengths of its key, value and base, those bytes, and a CRC-32 of all of it. The first
record, the header, names the file it applies on top of (the file's signature: inode, mtime, size)
and the sequence number through which that file already holds the entries. Then come the entries
(`S` set, `D` delete), their sequence numbers strictly rising, each with its base: the key's value
in the file when the entry was written (absent when the file did not hold the key); and flush
markers (`F`): "a rewrite holding every entry through N is about to become the file, with this
signature", appended and fsynced before the rename, so that after a crash between the rename and
the journal's rotation we know which entries the file already holds.

Which entries a file still lacks (`JournalContents.unapplied`): those after the header's or a
marker's sequence number when the file's signature is the one they name. Otherwise someone else
(the old application) changed the file since, and every entry after the header is merged with it
(`Entry.survives`, the rule of jsonfile.py): an entry applies unless the file's value of its key is
no longer the entry's base (the old application changed that key too) and the file is newer than
the entry (its mtime is later). So of two writes to one key the later wins, whoever made it, and an
old application's change is never lost under an older journal entry. Replaying entries the file
already holds is harmless: the file then holds, for every key they touch, the value of the last
entry touching it, which is what the replay leaves.

A record that does not read whole (short, bad CRC, bad magic) is a torn append from a crash (never
acknowledged: the fsync had not returned) when nothing readable follows it, and is ignored. When a
readable record does follow it, the journal is damaged in the middle: opening refuses with
JournalDamaged rather than silently dropping the acknowledged writes after it.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from proxy.backends.base import Key, Value
from proxy.backends.legacyfile import Signature, compact_value, parse_store, signature
from proxy.durable import fsync_dir, remove_file, replace_file
from proxy.errors import BackendUnavailable

SUFFIX = ".journal"
_MAGIC = b"TJ"
_HEAD = struct.Struct(">2sBQqIII")  # magic, kind, sequence number, wall time (ns), key, value, base lengths
_ABSENT = 0xFFFFFFFF  # the base length of a key the file did not hold
_CRC = struct.Struct(">I")
_HEADER, _SET, _DELETE, _FLUSHED = b"H"[0], b"S"[0], b"D"[0], b"F"[0]
_KINDS = frozenset((_HEADER, _SET, _DELETE, _FLUSHED))
#: Keys may hold lone surrogates (the old application's file can): kept exactly, as the file keeps them.
_KEY_ERRORS = "surrogatepass"


class JournalDamaged(BackendUnavailable):
    """The journal holds an unreadable record followed by readable ones: acknowledged writes would be lost."""


def journal_path(store: Path) -> Path:
    return store.with_name(store.name + SUFFIX)


def same_document(a: Value | None, b: Value | None) -> bool:
    """The same JSON document (or both absent), whatever the spacing: the file is read compacted,
    while a value set through turnout keeps the bytes its caller sent."""
    if a is None or b is None:
        return a is b
    return a == b or compact_value(a) == compact_value(b)


@dataclass(frozen=True, slots=True)
class Entry:
    """One acknowledged write: a set (value) or a delete (value None), with its key's value in the
    file when it was written (base; None when the file did not hold the key)."""

    seq: int
    key: Key
    value: Value | None
    base: Value | None = None
    wall_ns: int = 0  # time.time_ns() when written, compared with the file's mtime

    def survives(self, file_value: Value | None, file_mtime_ns: int, known: Sequence[Value | None] = ()) -> bool:
        """Whether this entry still applies over a file someone else changed since it was written:
        yes unless that change touched its key (the value is no longer the base, nor one of the
        `known` values turnout wrote there before) and came later."""
        if same_document(file_value, self.base) or any(same_document(file_value, value) for value in known):
            return True
        return self.wall_ns >= file_mtime_ns


def _record(kind: int, seq: int, key: bytes, value: bytes = b"", base: bytes | None = None, wall_ns: int = 0) -> bytes:
    base_len = _ABSENT if base is None else len(base)
    body = _HEAD.pack(_MAGIC, kind, seq, wall_ns, len(key), len(value), base_len) + key + value + (base or b"")
    return body + _CRC.pack(zlib.crc32(body))


def _sig_text(sig: Signature) -> bytes:
    return ":".join(str(part) for part in sig).encode()


def encode_entry(entry: Entry) -> bytes:
    key = entry.key.encode("utf-8", _KEY_ERRORS)
    kind, value = (_DELETE, b"") if entry.value is None else (_SET, entry.value)
    return _record(kind, entry.seq, key, value, entry.base, entry.wall_ns)


def encode_header(base: Signature, through: int) -> bytes:
    return _record(_HEADER, through, _sig_text(base))


def encode_flushed(through: int, sig: Signature) -> bytes:
    return _record(_FLUSHED, through, _sig_text(sig))


@dataclass
class JournalContents:
    base: Signature
    through: int
    entries: list[Entry] = field(default_factory=list)
    #: (through, signature) of every flush marker.
    flushed: list[tuple[int, Signature]] = field(default_factory=list)
    #: True when the last record was torn (a crash mid-append) and was ignored.
    torn_tail: bool = False

    def unapplied(self, file_sig: Signature) -> tuple[list[Entry], bool]:
        """The entries a file with this signature may lack, and whether they must be merged with it
        (Entry.survives) because someone else changed the file since (see the module docstring)."""
        known = [seq for seq, sig in self.flushed if sig == file_sig]
        if file_sig == self.base:
            known.append(self.through)
        through = max(known, default=self.through)
        return [entry for entry in self.entries if entry.seq > through], not known

    def over(self, data: dict[Key, Value], file_sig: Signature, merge: bool = True) -> tuple[list[Entry], list[Entry]]:
        """(applied, superseded): the entries to apply, in order, over the file that holds data and has
        this signature, and those that a later change of their key by the old application overrides.
        Without merge every entry the file may lack applies (a file gone missing is no one's change)."""
        pending, changed = self.unapplied(file_sig)
        if not (changed and merge):
            return pending, []
        # After a crash the file may descend from a rewrite of ours whose rotation never happened (its
        # flush marker is here, but whether its rename happened is not): a value an earlier entry
        # wrote to the key is then one the old application did not change either.
        unapplied = {entry.seq for entry in pending}
        written: dict[Key, list[Value | None]] = {}
        applied: list[Entry] = []
        superseded: list[Entry] = []
        for entry in self.entries:
            known = written.setdefault(entry.key, [])
            if entry.seq in unapplied:
                (applied if entry.survives(data.get(entry.key), file_sig[1], known) else superseded).append(entry)
            known.append(entry.value)
        return applied, superseded


class _Record(NamedTuple):
    kind: int
    seq: int
    wall_ns: int
    key: bytes
    value: bytes
    base: bytes | None
    end: int


def _read_record(raw: bytes, pos: int) -> _Record | None:
    """The record at pos, or None when none reads whole there."""
    head_end = pos + _HEAD.size
    if head_end > len(raw):
        return None
    magic, kind, seq, wall_ns, key_len, value_len, base_len = _HEAD.unpack_from(raw, pos)
    base_size = 0 if base_len == _ABSENT else base_len
    end = head_end + key_len + value_len + base_size + _CRC.size
    if magic != _MAGIC or kind not in _KINDS or end > len(raw):
        return None
    (crc,) = _CRC.unpack_from(raw, end - _CRC.size)
    if crc != zlib.crc32(memoryview(raw)[pos : end - _CRC.size]):
        return None
    at = head_end + key_len + value_len
    base = None if base_len == _ABSENT else raw[at : at + base_size]
    return _Record(kind, seq, wall_ns, raw[head_end : head_end + key_len], raw[head_end + key_len : at], base, end)


def _readable_after(raw: bytes, pos: int) -> bool:
    """True when a whole record starts anywhere after pos (so the bad one at pos is not a torn tail).

    A value is JSON text, which holds no NUL byte, so a record's binary header never appears inside
    one by chance; only a real record reads whole."""
    at = raw.find(_MAGIC, pos + 1)
    while at != -1:
        if _read_record(raw, at) is not None:
            return True
        at = raw.find(_MAGIC, at + 1)
    return False


def _parse_sig(text: bytes, where: str) -> Signature:
    try:
        ino, mtime, size = (int(part) for part in text.decode().split(":"))
    except ValueError:
        raise JournalDamaged(f"{where}: a record names no file signature") from None
    return ino, mtime, size


def parse_journal(raw: bytes, where: str) -> JournalContents | None:
    """The journal's contents; None for an empty one. JournalDamaged when it cannot be read safely."""
    if not raw:
        return None
    first = _read_record(raw, 0)
    if first is None or first.kind != _HEADER:
        raise JournalDamaged(f"{where}: the journal does not start with its header; refusing to guess "
                             "what it holds (move it away only once its writes are known to be in the file)")
    contents = JournalContents(_parse_sig(first.key, where), first.seq)
    last_seq = contents.through
    pos = first.end
    while pos < len(raw):
        record = _read_record(raw, pos)
        if record is None:
            if _readable_after(raw, pos):
                raise JournalDamaged(f"{where}: a damaged entry at byte {pos} with readable entries after it; "
                                     "refusing to open rather than drop the acknowledged writes that follow")
            contents.torn_tail = True  # a crash mid-append: never acknowledged
            break
        pos = record.end
        if record.kind == _FLUSHED:
            contents.flushed.append((record.seq, _parse_sig(record.key, where)))
            continue
        if record.kind == _HEADER or record.seq <= last_seq:
            raise JournalDamaged(f"{where}: entries out of order at byte {pos}")
        last_seq = record.seq
        value = record.value if record.kind == _SET else None
        contents.entries.append(Entry(record.seq, record.key.decode("utf-8", _KEY_ERRORS), value, record.base,
                                      record.wall_ns))
    return contents


def read_journal(path: Path) -> JournalContents | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackendUnavailable(f"{path}: cannot read the journal: {exc.strerror or exc}") from exc
    return parse_journal(raw, str(path))


def read_file_and_journal(store: Path, attempts: int = 20) -> tuple[bytes, list[Entry]]:
    """The legacy file's bytes and the journal entries to apply over them, for a tool that reads the
    file as written while a proxy may be serving it (and rewriting both).

    The journal is read after the file: a rewrite's flush marker precedes its rename, so it is then
    in what we read. A journal rotated meanwhile (its inode changed) means reading both again."""
    jpath = journal_path(store)
    for _ in range(attempts):
        before = _inode(jpath)
        with store.open("rb") as file:
            sig = signature(os.fstat(file.fileno()))
            raw = file.read()
        contents = read_journal(jpath)
        if _inode(jpath) != before:
            continue
        if contents is None:
            return raw, []
        pending, merge = contents.unapplied(sig)
        if merge:
            pending, _ = contents.over(parse_store(raw, store), sig)
        return raw, pending
    raise BackendUnavailable(f"{store}: its journal kept being rotated while read; try again")


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


class JournalWriter:
    """The open journal of a serving backend: appended to by writes, rotated after each rewrite.

    Every method runs in a worker thread, one at a time (the backend's commit lock orders them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._size = 0
        #: Set when a failed append could not be undone: writing on would put garbage mid-journal.
        self._broken = ""

    def start(self, base: Signature, through: int, carried: bytes = b"") -> None:
        """Replace the journal, atomically, by a header and the entries carried over; append after them."""
        data = encode_header(base, through) + carried
        replace_file(self.path, data)
        # The old descriptor now names a deleted file: appending there would lose writes.
        self.close()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            self._broken = f"cannot reopen it: {exc.strerror or exc}"
            raise
        self._size, self._broken = len(data), ""

    @property
    def broken(self) -> bool:
        """True when appends are refused until the next successful start()."""
        return bool(self._broken)

    def append(self, chunk: bytes) -> None:
        """Append whole records and fsync; on failure the journal is cut back to what it held."""
        if self._broken:
            raise BackendUnavailable(f"{self.path}: journal unusable after a failed append ({self._broken})")
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            try:
                os.ftruncate(self._fd, self._size)
                os.fsync(self._fd)
            except OSError:
                self._broken = reason
            raise BackendUnavailable(f"{self.path}: journal append failed: {reason}") from exc
        self._size += len(chunk)

    def remove(self) -> None:
        """Close and delete the journal: the file holds everything."""
        self.close()
        remove_file(self.path)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def drop_journal(store: Path) -> None:
    """Delete a journal whose entries the file now holds (durable: the folder is fsynced)."""
    if remove_file(journal_path(store), sync_folder=False):
        fsync_dir(store.parent)
