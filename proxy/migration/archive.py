"""Archive and restore: a compressed, versioned, timestamped, checksummed snapshot of one store.

The archive is one zstd stream of JSON lines: a header (format, version, time, source store), one
`[key, document]` line per record, and a trailer holding the record count, the content checksum
(proxy/checksum.py) and the SHA-256 of every byte before the trailer. Restore reads the whole
archive once to check the SHA-256 and the count before it writes anything.
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
from proxy.checksum import item_hash
from proxy.errors import TurnoutError
from proxy.progress import Progress

FORMAT = "turnout-archive"
VERSION = 1
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
                emit(json.dumps([key, json.loads(value)], ensure_ascii=False).encode() + b"\n")
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
        try:
            doc = json.loads(line)
        except ValueError:
            raise ArchiveError(f"{path}: a damaged line after {records} records") from None
        if header is None:
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ArchiveError(f"{path}: not a turnout archive")
            if doc.get("version") != VERSION:
                raise ArchiveError(f"{path}: archive version {doc.get('version')} is not supported")
            header = doc
            digest.update(line)
        elif isinstance(doc, dict) and doc.get("trailer"):
            trailer = doc
        else:
            digest.update(line)
            key, value = doc
            records += 1
            checksum = (checksum + item_hash(key, json.dumps(value).encode())) & _MASK
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
    first = True
    for line in _lines(path):
        if first:
            first = False
            continue
        doc = json.loads(line)
        if isinstance(doc, dict):
            break  # the trailer
        key, value = doc
        batch.append((key, json.dumps(value, ensure_ascii=False).encode()))
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
