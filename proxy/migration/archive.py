"""Archive and restore: a compressed, versioned, timestamped, checksummed snapshot of one store.

The archive is one zstd stream of JSON lines: a header (format, version, time, source store), one
`[key, document]` line per record, and a trailer holding the record count, the content checksum
(proxy/checksum.py) and the SHA-256 of every byte before the trailer. Restore reads the whole
archive once to check the SHA-256 and the count before it writes anything.

The archive never lands where it could hurt: an existing OUT is kept unless the caller forces it, the
temporary file beside it is created exclusively and never through a link (a planted `OUT.partial`,
file or symlink, is refused, not followed or truncated), and the caller names the paths that must never
be written (a store's files, its lock, a jsondir folder, state_dir), which no force overrides.

Since version 2 each document is written as the store holds it (line breaks, which JSON allows only
as whitespace, become spaces), not parsed and printed again, so a number Python would change
(0.10000000000000000555, 1e2) comes back as it was. Version 1 archives are still read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from proxy.backends.base import Backend, Item
from proxy.errors import TurnoutError
from proxy.migration.checksum import item_hash
from proxy.progress import Progress

FORMAT = "turnout-archive"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_MASK = (1 << 64) - 1
RESTORE_BATCH = 1000


class ArchiveError(TurnoutError):
    """The archive is damaged, truncated or not a turnout archive: nothing was restored."""


class ArchiveRefused(TurnoutError):
    """The archive's output path is taken or protected: nothing was written."""


@dataclass(frozen=True, slots=True)
class Protected:
    """A path an archive must never write: `path` itself, and with `tree` anything inside it."""

    path: Path
    what: str
    tree: bool = False

    def covers(self, candidate: Path) -> bool:
        real = Path(os.path.realpath(self.path))
        return candidate == real or (self.tree and candidate.is_relative_to(real))


def _where(out: Path) -> set[Path]:
    """Every real path a write to `out` could reach: the link's target and the name in its folder."""
    return {Path(os.path.realpath(out)), Path(os.path.realpath(out.parent)) / out.name}


def check_out(out: Path, protected: Iterable[Protected], force: bool = False) -> None:
    """Refuse an output path that is protected (whatever `force` says) or already exists (unless forced)."""
    reachable = _where(out) | _where(out.with_name(out.name + PARTIAL))
    for guard in protected:
        if any(guard.covers(candidate) for candidate in reachable):
            raise ArchiveRefused(f"{out}: refusing to write an archive over {guard.what} ({guard.path})")
    if out.is_dir():
        raise ArchiveRefused(f"{out} is a folder: name the archive file to write")
    if not force and (out.exists() or out.is_symlink()):
        raise ArchiveRefused(f"{out} exists already: nothing written (--force replaces it)")


#: The temporary file an archive is written to beside OUT, then renamed over it.
PARTIAL = ".partial"
_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _create_partial(temp: Path) -> int:
    try:
        # 0600: an archive holds every value of the store, so only its maker reads it until it chooses.
        return os.open(temp, _EXCLUSIVE, 0o600)
    except FileExistsError:
        raise ArchiveRefused(f"{temp} exists (left by an interrupted archive, or planted): remove it "
                             "first; it was not followed or changed") from None
    except OSError as exc:
        raise ArchiveRefused(f"{temp}: cannot create the archive ({exc.strerror or exc})") from None


@dataclass(frozen=True, slots=True)
class ArchiveSummary:
    path: str
    records: int
    checksum: str
    sha256: str
    created: float
    source: str

    def to_document(self) -> dict[str, Any]:
        return {"path": self.path, "records": self.records, "checksum": self.checksum, "sha256": self.sha256,
                "created": self.created, "source": self.source}


async def archive(backend: Backend, out: Path, source: str, progress: Progress | None = None,
                  protected: Iterable[Protected] = (), force: bool = False) -> ArchiveSummary:
    """Write the archive of `backend` to `out` (see check_out for what is refused)."""
    protected = tuple(protected)
    check_out(out, protected, force)
    temp = out.with_name(out.name + PARTIAL)
    raw = os.fdopen(_create_partial(temp), "wb")
    try:
        summary = await _write(backend, raw, out, source, progress)
        os.fsync(raw.fileno())
    except BaseException:
        raw.close()
        with contextlib.suppress(OSError):
            temp.unlink()  # ours: created exclusively above
        raise
    raw.close()
    try:
        check_out(out, protected, force)  # again: OUT may have appeared (or been linked) while we wrote
        temp.replace(out)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return summary


async def _write(backend: Backend, raw: io.BufferedWriter, out: Path, source: str,
                 progress: Progress | None) -> ArchiveSummary:
    created = time.time()
    digest = hashlib.sha256()
    records = 0
    checksum = 0
    with zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as writer:

        def emit(line: bytes) -> None:
            digest.update(line)
            writer.write(line)

        emit(json.dumps({"format": FORMAT, "version": VERSION, "created": created, "source": source}).encode()
             + b"\n")
        async for page in backend.scan():
            for key, value in page:
                flat = value.replace(b"\r", b" ").replace(b"\n", b" ").strip()
                emit(b"[" + json.dumps(key, ensure_ascii=False).encode() + b"," + flat + b"]\n")
                records += 1
                checksum = (checksum + item_hash(key, value)) & _MASK
            if progress is not None:
                progress.advance(len(page))
        sha = digest.hexdigest()
        writer.write(json.dumps({"trailer": True, "records": records, "checksum": f"{checksum:016x}",
                                 "sha256": sha}).encode() + b"\n")
    return ArchiveSummary(str(out), records, f"{checksum:016x}", sha, created, source)


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            yield from io.BufferedReader(reader)
    except zstandard.ZstdError as exc:
        raise ArchiveError(f"{path}: not a readable zstd stream ({exc})") from None
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read the archive ({exc.strerror or exc})") from None


_decoder = json.JSONDecoder()


def _record(line: bytes, version: int) -> tuple[str, bytes]:
    """One record line as (key, document bytes); ValueError when it is not one."""
    if version == 1:
        key, value = json.loads(line)
        return key, json.dumps(value, ensure_ascii=False).encode()
    text = line.decode("utf-8").rstrip("\r\n")
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError("not a record")
    key, end = _decoder.raw_decode(text, 1)
    if not isinstance(key, str) or text[end:end + 1] != ",":
        raise ValueError("not a record")
    value = text[end + 1:-1].encode("utf-8")
    # One JSON document, or a damaged line. A document nested past what Python's parser reads (a
    # legacy store may hold one) is taken as written: the archive's SHA-256 still proves the line whole.
    with contextlib.suppress(RecursionError):
        json.loads(value)
    return key, value


def _damaged(path: Path, records: int) -> ArchiveError:
    return ArchiveError(f"{path}: a damaged line after {records} records")


def check(path: Path) -> ArchiveSummary:
    """Read the whole archive and prove it whole: header, SHA-256, count and content checksum."""
    digest = hashlib.sha256()
    header: dict[str, Any] | None = None
    records = 0
    checksum = 0
    trailer: dict[str, Any] | None = None
    for line in _lines(path):
        if trailer is not None:
            raise ArchiveError(f"{path}: data after the trailer")
        if header is None:
            try:
                doc = json.loads(line)
            except ValueError:
                raise ArchiveError(f"{path}: not a turnout archive") from None
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ArchiveError(f"{path}: not a turnout archive")
            if doc.get("version") not in READABLE_VERSIONS:
                raise ArchiveError(f"{path}: archive version {doc.get('version')} is not supported")
            header = doc
            digest.update(line)
        elif line.startswith(b"{"):
            try:
                trailer = json.loads(line)
            except ValueError:
                raise _damaged(path, records) from None
            if not isinstance(trailer, dict) or not trailer.get("trailer"):
                raise _damaged(path, records)
        else:
            digest.update(line)
            try:
                key, value = _record(line, int(header["version"]))
            except (ValueError, TypeError):
                raise _damaged(path, records) from None
            records += 1
            checksum = (checksum + item_hash(key, value)) & _MASK
    if header is None or trailer is None:
        raise ArchiveError(f"{path}: truncated (no trailer)")
    if trailer.get("sha256") != digest.hexdigest():
        raise ArchiveError(f"{path}: SHA-256 mismatch: the archive is damaged")
    if trailer.get("records") != records or trailer.get("checksum") != f"{checksum:016x}":
        raise ArchiveError(f"{path}: record count or content checksum mismatch")
    return ArchiveSummary(str(path), records, trailer["checksum"], trailer["sha256"], float(header["created"]),
                          str(header.get("source", "")))


async def restore(path: Path, backend: Backend, progress: Progress | None = None) -> ArchiveSummary:
    summary = check(path)  # nothing is written unless the whole archive is sound
    batch: list[Item] = []
    version = 0
    for line in _lines(path):
        if not version:
            version = int(json.loads(line)["version"])
            continue
        if line.startswith(b"{"):
            break  # the trailer
        batch.append(_record(line, version))
        if len(batch) >= RESTORE_BATCH:
            await backend.set_many(batch)
            if progress is not None:
                progress.advance(len(batch))
            batch = []
    if batch:
        await backend.set_many(batch)
        if progress is not None:
            progress.advance(len(batch))
    return summary
