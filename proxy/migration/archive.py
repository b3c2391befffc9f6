"""Archive and restore: a compressed, versioned, timestamped, checksummed snapshot of one store.

The archive is one zstd stream of JSON lines: a header (format, version, time, source store), one
`[key, document]` line per record, and a trailer holding the record count, the content checksum
(proxy/checksum.py) and the SHA-256 of every byte before the trailer. Restore reads the whole
archive once to check the SHA-256 and the count before it writes anything.

Since version 2 each document is written as the store holds it (line breaks, which JSON allows only
as whitespace, become spaces), not parsed and printed again, so a number Python would change
(0.10000000000000000555, 1e2) comes back as it was. Version 1 archives are still read.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
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


async def archive(backend: Backend, out: Path, source: str, progress: Progress | None = None) -> ArchiveSummary:
    created = time.time()
    digest = hashlib.sha256()
    records = 0
    checksum = 0
    temp = out.with_name(out.name + ".partial")
    with temp.open("wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as writer:

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
    temp.replace(out)
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
    json.loads(value)  # one JSON document, or a damaged line
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
