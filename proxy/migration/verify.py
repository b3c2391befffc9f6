"""Verify: which keys are missing from new, differ, or exist only in new, with a checksum of each side.

Two ordered stores are compared by merging their scans, so neither side is held in memory; an
unordered store (a jsondir folder) is read into memory first. Inside a running proxy, a key that
differs is checked again once any write of it still being replicated has landed, under its lock,
so live traffic raises no false alarm. `repair` copies each differing key from its source of truth
(its current write primary) to the other store, then verifies again.

With one store named the truth for every key (rollback's sync back, `verify --repair --truth`),
repair copies what that store holds and never deletes: a key only the other store holds is left
as it is and still reported, because a bulk delete there could destroy data no other copy has
(legacy keys a partial migration never copied).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from proxy import statedir
from proxy.backends.base import Backend, Item
from proxy.data.compare import documents_equal
from proxy.data.coverage import VerifyTally
from proxy.migration.checksum import canonical, canonical_hash, item_hash
from proxy.migration.stores import Stores
from proxy.progress import Progress
from proxy.replication.replayer import put_state
from proxy.routing.router import Route

SAMPLES = 10
#: Keys remembered for re-checking and repair; beyond it only counts are kept.
MAX_TRACKED = 1_000_000
#: How long a live re-check waits for a key's pending replication.
RECHECK_WAIT_S = 5.0

_MASK = (1 << 64) - 1


@dataclass
class Side:
    records: int = 0
    checksum: int = 0

    def add(self, key: str, value: bytes) -> None:
        self.add_hash(item_hash(key, value))

    def add_hash(self, hashed: int) -> None:
        self.records += 1
        self.checksum = (self.checksum + hashed) & _MASK


@dataclass
class VerifyResult:
    old_records: int = 0
    new_records: int = 0
    old_checksum: str = ""
    new_checksum: str = ""
    missing: int = 0
    different: int = 0
    extra: int = 0
    samples: dict[str, list[str]] = field(default_factory=lambda: {"missing": [], "different": [], "extra": []})
    rechecked_clean: int = 0
    repaired: int = 0
    duration_s: float = 0.0
    tracked: list[tuple[str, str]] = field(default_factory=list)  # (kind, key), for re-check and repair
    #: Keys by prefix (agreeing, differing), kept in the record for status's key-space coverage.
    prefixes: VerifyTally = field(default_factory=VerifyTally)

    @property
    def clean(self) -> bool:
        return self.missing == self.different == self.extra == 0

    def note(self, kind: str, key: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.prefixes.differ(key)
        if len(self.samples[kind]) < SAMPLES:
            self.samples[kind].append(key)
        if len(self.tracked) < MAX_TRACKED:
            self.tracked.append((kind, key))

    def to_document(self) -> dict[str, Any]:
        doc = asdict(self)
        del doc["tracked"]
        doc["prefixes"] = self.prefixes.to_document()
        doc["clean"] = self.clean
        return doc


async def _items(backend: Backend) -> AsyncIterator[Item]:
    async for page in backend.scan("", 2000):
        for item in page:
            yield item


async def compare_stores(old: Backend, new: Backend, progress: Progress | None = None) -> VerifyResult:
    result = VerifyResult()
    old_side, new_side = Side(), Side()
    if old.ordered_scan and new.ordered_scan:
        await _merge(old, new, old_side, new_side, result, progress)
    else:
        await _in_memory(old, new, old_side, new_side, result, progress)
    result.old_records, result.new_records = old_side.records, new_side.records
    result.old_checksum, result.new_checksum = f"{old_side.checksum:016x}", f"{new_side.checksum:016x}"
    return result


class _Cursor:
    """Walks a store's scan item by item, awaiting only when a page runs out (items are the hot loop)."""

    def __init__(self, backend: Backend) -> None:
        self._pages = backend.scan("", 2000)
        self._page: list[Item] = []
        self._index = 0
        self.item: Item | None = None

    async def advance(self) -> None:
        if self._index >= len(self._page):
            self._page = await anext(self._pages, [])
            self._index = 0
            if not self._page:
                self.item = None
                return
        self.item = self._page[self._index]
        self._index += 1


async def _merge(old: Backend, new: Backend, old_side: Side, new_side: Side, result: VerifyResult,
                 progress: Progress | None) -> None:
    left, right = _Cursor(old), _Cursor(new)
    await left.advance()
    await right.advance()
    while left.item is not None or right.item is not None:
        a, b = left.item, right.item
        if b is None or (a is not None and a[0] < b[0]):
            assert a is not None
            old_side.add(*a)
            result.note("missing", a[0])
            await left.advance()
        elif a is None or b[0] < a[0]:
            new_side.add(*b)
            result.note("extra", b[0])
            await right.advance()
        else:
            _both(a[0], a[1], b[1], old_side, new_side, result)
            await left.advance()
            await right.advance()
        if progress is not None:
            progress.advance()


async def _in_memory(old: Backend, new: Backend, old_side: Side, new_side: Side, result: VerifyResult,
                     progress: Progress | None) -> None:
    theirs: dict[str, bytes] = {}
    async for key, value in _items(new):
        theirs[key] = value  # hashed below, beside its old copy (once, when the two are the same bytes)
    async for key, value in _items(old):
        other = theirs.pop(key, None)
        if other is None:
            old_side.add(key, value)
            result.note("missing", key)
        else:
            _both(key, value, other, old_side, new_side, result)
        if progress is not None:
            progress.advance()
    for key in sorted(theirs):
        new_side.add(key, theirs[key])
        result.note("extra", key)


def _both(key: str, old_value: bytes, new_value: bytes, old_side: Side, new_side: Side,
          result: VerifyResult) -> None:
    """A key both stores hold: add it to both checksums and note it if the documents differ."""
    if old_value == new_value:
        # The same bytes (a store that keeps what it was given): one hash for both sides.
        hashed = item_hash(key, old_value)
        old_side.add_hash(hashed)
        new_side.add_hash(hashed)
        result.prefixes.agree(key)
        return
    # A store that writes documents its own way (jsonb): the canonical forms the checksums need are
    # also the comparison, equal for equal documents but for spellings of a number (1 and 1.0),
    # which the full comparison decides.
    old_canonical, new_canonical = canonical(old_value), canonical(new_value)
    old_side.add_hash(canonical_hash(key, old_canonical))
    new_side.add_hash(canonical_hash(key, new_canonical))
    if old_canonical != new_canonical and not documents_equal(old_value, new_value):
        result.note("different", key)
    else:
        result.prefixes.agree(key)


async def _recheck(stores: Stores, result: VerifyResult) -> VerifyResult:
    """Inside a proxy: a difference counts only if it is still there once in-flight writes have landed."""
    live = stores.live
    assert live is not None
    confirmed = VerifyResult(old_records=result.old_records, new_records=result.new_records,
                             old_checksum=result.old_checksum, new_checksum=result.new_checksum)
    for _kind, key in result.tracked:
        await live.queue.wait_settled(key, RECHECK_WAIT_S)
        async with live.locks.hold(key):
            old_value, new_value = await stores.old.get(key), await stores.new.get(key)
        if old_value is None and new_value is None:
            confirmed.rechecked_clean += 1
            result.prefixes.cleared(key, gone=True)
        elif old_value is None:
            confirmed.note("extra", key)
        elif new_value is None:
            confirmed.note("missing", key)
        elif not documents_equal(old_value, new_value):
            confirmed.note("different", key)
        else:
            confirmed.rechecked_clean += 1
            result.prefixes.cleared(key)
    # The first pass counted every key by prefix; the re-check only moved some from differing to agreeing.
    confirmed.prefixes = result.prefixes
    # Counts beyond what was tracked cannot be re-checked: keep them as they were found.
    for kind in ("missing", "different", "extra"):
        untracked = getattr(result, kind) - sum(1 for k, _ in result.tracked if k == kind)
        setattr(confirmed, kind, getattr(confirmed, kind) + untracked)
    return confirmed


async def repair(stores: Stores, result: VerifyResult, truth_for_all: Route | None = None) -> int:
    """Copy every tracked difference from its source of truth (each key's write primary, unless one
    store is named for all) to the other store."""
    repaired = 0
    for kind, key in result.tracked:
        truth = truth_for_all or stores.truth(key)
        if truth_for_all is not None and kind == ("missing" if truth is Route.NEW else "extra"):
            continue  # only the target holds it: copying would delete it there (see the module doc)
        source, target = stores.backend(truth), stores.backend(truth.other)
        if stores.live is None:
            value = await source.get(key)
            if value is None and truth_for_all is not None:
                continue
            await put_state(key, value, target)
            repaired += 1
            continue
        async with stores.live.locks.hold(key):
            # Holding the lock, no write interleaves; a write since the comparison is either still
            # pending (the replayer will copy it) or has made the stores agree: both mean hands off.
            if stores.live.queue.pending(key) is not None:
                continue
            source_value, target_value = await source.get(key), await target.get(key)
            if source_value == target_value or (
                source_value is not None and target_value is not None and documents_equal(source_value, target_value)
            ):
                continue
            if source_value is None and truth_for_all is not None:
                continue
            await put_state(key, source_value, target)
            repaired += 1
    return repaired


async def verify(stores: Stores, fix: bool = False, progress: Progress | None = None,
                 truth: Route | None = None, record_in: Path | None = None) -> VerifyResult:
    """Compare the stores (and repair them with `fix`); with `record_in`, keep the outcome in that
    state_dir for the cutover's gate, whoever asked for the verify (the command line or the admin API)."""
    started = time.monotonic()
    result = await compare_stores(stores.old, stores.new, progress)
    if stores.live is not None and not result.clean:
        result = await _recheck(stores, result)
    if fix and not result.clean:
        repaired = await repair(stores, result, truth)
        result = await compare_stores(stores.old, stores.new)
        if stores.live is not None and not result.clean:
            result = await _recheck(stores, result)
        result.repaired = repaired
    result.duration_s = time.monotonic() - started
    if record_in is not None:
        statedir.record_verify(record_in, result.to_document())
    return result
