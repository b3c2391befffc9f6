"""A content checksum of a whole backend that two stores agree on when they hold the same documents.

Order-free (a sum of per-item hashes), so pages may come in any order, and computed over each
document in canonical JSON (sorted keys, no whitespace), so formatting differences between stores
do not count: the checksums match exactly when the key-to-document maps are equal as JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import msgspec

from proxy.backends.base import Backend

_MASK = (1 << 64) - 1


_canonical_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_decode = json.JSONDecoder().decode


def _python_float(text: str) -> msgspec.Raw:
    """A float written as the standard library writes it (its repr: `1e+16`, `1e-05`), where msgspec
    would write `1e16`: handed to the encoder as raw bytes, so it is copied out as they are."""
    number = float(text)
    if not math.isfinite(number):
        # 1e400: the standard library reads it as inf and writes `Infinity`; leave the whole
        # document to it rather than copy that rule.
        raise ValueError("not a finite number")
    return msgspec.Raw(repr(number).encode())


#: msgspec (several times faster than the standard library) for what it reads exactly as the standard
#: library does: it refuses NaN, lone surrogates, invalid UTF-8, raw control characters in strings
#: and integers past what the standard library reads, and those documents fall back to it. Integers
#: of any size it reads as Python ints, written out as the standard library writes them.
_fast_decode = msgspec.json.Decoder(float_hook=_python_float).decode
#: Members sorted by code point, as sort_keys does; strings escaped as ensure_ascii=False escapes
#: them (the differential test in tests/unit/migration/test_checksum_canonical.py holds both to it).
_fast_encode = msgspec.json.Encoder(order="sorted").encode
#: Past this many brackets a document may be nested nearly as deep as the interpreter's recursion
#: limit, where msgspec and the standard library give up a few levels apart: leave it to the latter.
_FAST_MAX_CONTAINERS = 256


def canonical(value: bytes) -> bytes:
    """Sorted members, no whitespace, byte for byte as the standard library writes them, for every
    input; the common document takes msgspec's much faster path."""
    # (A value shorter than the limit cannot hold that many brackets: no need to count them.)
    if len(value) < _FAST_MAX_CONTAINERS or value.count(b"[") + value.count(b"{") < _FAST_MAX_CONTAINERS:
        try:
            return _fast_encode(_fast_decode(value))
        except (msgspec.DecodeError, ValueError, RecursionError):
            pass  # what msgspec refuses (see above): the standard library decides
    # The standard library's form, the definition every checksum kept (verify records, archives'
    # trailers) was made with. In this frame, not a helper's: near the recursion limit whether a
    # document parses depends on how deep the stack is, and one frame more would move that line.
    try:
        return _canonical_encoder.encode(_decode(value.decode("utf-8"))).encode()
    except (ValueError, RecursionError):
        # Not JSON, or nested past what Python's parser takes (about 1000 levels, far past what Set
        # accepts): hash the bytes as they are, so the summary is still made and verify names the key.
        return value


def item_hash(key: str, value: bytes) -> int:
    return canonical_hash(key, canonical(value))


def canonical_hash(key: str, canonical_value: bytes) -> int:
    """item_hash of a value whose canonical form the caller has made already (and compares)."""
    digest = hashlib.sha256(key.encode("utf-8") + b"\x00" + canonical_value).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(frozen=True, slots=True)
class Summary:
    records: int
    checksum: str  # 16 hex digits

    def to_document(self) -> dict[str, object]:
        return {"records": self.records, "checksum": self.checksum}


async def summarize(backend: Backend, prefix: str = "") -> Summary:
    total = 0
    count = 0
    async for page in backend.scan(prefix):
        for key, value in page:
            total = (total + item_hash(key, value)) & _MASK
            count += 1
    return Summary(count, f"{total:016x}")
