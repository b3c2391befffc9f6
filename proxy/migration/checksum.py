"""A content checksum of a whole backend that two stores agree on when they hold the same documents.

Order-free (a sum of per-item hashes), so pages may come in any order, and computed over each
document in canonical JSON (sorted keys, no whitespace), so formatting differences between stores
do not count: the checksums match exactly when the key-to-document maps are equal as JSON.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from proxy.backends.base import Backend

_MASK = (1 << 64) - 1


_canonical_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_decode = json.JSONDecoder().decode


def canonical(value: bytes) -> bytes:
    try:
        return _canonical_encoder.encode(_decode(value.decode("utf-8"))).encode()
    except (ValueError, RecursionError):
        # Not JSON, or nested past what Python's parser takes (about 1000 levels, far past what Set
        # accepts): hash the bytes as they are, so the summary is still made and verify names the key.
        return value


def item_hash(key: str, value: bytes) -> int:
    digest = hashlib.sha256(key.encode("utf-8") + b"\x00" + canonical(value)).digest()
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
