"""Bulk migrate: stream one store into the other in batches, resumable, throttled, validated.

Offline (no proxy) a batch is copied as it was read. Live (inside the proxy) each key is copied
under its lock, from its current state, and only when no write of it is still being replicated: a
backfill then never overwrites a newer live write and never brings back a deleted key.

Re-running is safe: a key whose target already holds an equal document is skipped, and a
checkpoint in state_dir lets an interrupted run resume after the last key it finished (for stores
whose scans are ordered) and a finished run return at once.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from proxy import statefile
from proxy.backends.base import Backend, Item, get_many
from proxy.compare import documents_equal
from proxy.migration.stores import Stores
from proxy.progress import Progress
from proxy.router import Route

CHECKPOINT = "migrate-checkpoint.json"
MAX_ERROR_SAMPLES = 100

Transform = Callable[[str, Any], Any]


@dataclass
class MigrateResult:
    total: int = 0
    migrated: int = 0
    skipped: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    error_count: int = 0
    duration_s: float = 0.0
    rate_per_s: float = 0.0
    resumed_after: str | None = None
    already_complete: bool = False

    def to_document(self) -> dict[str, Any]:
        return asdict(self)


def load_transform(spec: str) -> Transform:
    """`module:function`, called as function(key, document) -> document."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"--transform: expected module:function, got {spec!r}")
    function = getattr(importlib.import_module(module_name), name)
    if not callable(function):
        raise ValueError(f"--transform: {spec} is not callable")
    return function  # type: ignore[no-any-return]


class Throttle:
    """At most `rate` keys a second, on average (None: as fast as the stores go)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._started = time.monotonic()
        self._done = 0

    async def take(self, n: int) -> None:
        self._done += n
        if self.rate:
            ahead = self._done / self.rate - (time.monotonic() - self._started)
            if ahead > 0:
                await asyncio.sleep(ahead)


async def count_keys(backend: Backend) -> int:
    return sum([len(page) async for page in backend.keys()])


async def migrate(stores: Stores, state_dir: Path, source: Route = Route.OLD, batch_size: int = 500,
                  concurrency: int = 16, rate: float | None = None, transform: Transform | None = None,
                  restart: bool = False, progress: Progress | None = None) -> MigrateResult:
    started = time.monotonic()
    src, dst = stores.backend(source), stores.backend(source.other)
    checkpoint_path = state_dir / CHECKPOINT
    checkpoint = None if restart else statefile.read_json(checkpoint_path)
    if checkpoint is not None and checkpoint.get("source") != source.value:
        checkpoint = None
    result = MigrateResult()
    if checkpoint is not None and checkpoint.get("complete"):
        result.already_complete = True
        return result
    resume_after = checkpoint.get("last_key") if checkpoint and src.ordered_scan else None
    result.resumed_after = resume_after
    if progress is not None:
        progress.total = await count_keys(src)
    throttle = Throttle(rate)
    slots = asyncio.Semaphore(concurrency)
    async for page in src.scan("", batch_size):
        if resume_after is not None:
            skipped_by_checkpoint = sum(1 for key, _ in page if key <= resume_after)
            if progress is not None:
                progress.advance(skipped_by_checkpoint)
            page = [(key, value) for key, value in page if key > resume_after]
            if not page:
                continue
        await throttle.take(len(page))
        await _copy_batch(stores, source, src, dst, page, transform, slots, result)
        result.total += len(page)
        statefile.write_json(checkpoint_path, {"source": source.value, "last_key": page[-1][0], "complete": False,
                                               "migrated": result.migrated, "errors": result.error_count})
        if progress is not None:
            progress.advance(len(page))
    statefile.write_json(checkpoint_path, {"source": source.value, "last_key": None, "complete": True,
                                           "migrated": result.migrated, "errors": result.error_count,
                                           "finished": time.time()})
    result.duration_s = time.monotonic() - started
    result.rate_per_s = result.total / result.duration_s if result.duration_s else 0.0
    return result


def _error(result: MigrateResult, key: str, message: str) -> None:
    result.error_count += 1
    if len(result.errors) < MAX_ERROR_SAMPLES:
        result.errors.append({"key": key, "error": message})


def _transformed(transform: Transform | None, key: str, value: bytes) -> bytes:
    if transform is None:
        return value
    return json.dumps(transform(key, json.loads(value)), ensure_ascii=False, allow_nan=False).encode()


async def _copy_batch(stores: Stores, source: Route, src: Backend, dst: Backend, page: Sequence[Item],
                      transform: Transform | None, slots: asyncio.Semaphore, result: MigrateResult) -> None:
    if stores.live is not None:
        await asyncio.gather(*(_copy_live(stores, source, src, dst, key, transform, slots, result)
                               for key, _ in page))
        return
    existing = await get_many(dst, [key for key, _ in page])
    writes: list[Item] = []
    for (key, value), current in zip(page, existing, strict=True):
        try:
            wanted = _transformed(transform, key, value)
        except Exception as exc:
            _error(result, key, f"transform failed: {exc}")
            continue
        if current is not None and documents_equal(current, wanted):
            result.skipped += 1
        else:
            writes.append((key, wanted))
    if not writes:
        return
    try:
        await dst.set_many(writes)
    except Exception as exc:
        for key, _ in writes:
            _error(result, key, f"write failed: {exc}")
        return
    read_back = await get_many(dst, [key for key, _ in writes])
    for (key, wanted), stored in zip(writes, read_back, strict=True):
        if stored is None or not documents_equal(stored, wanted):
            _error(result, key, "read-back differs from what was written")
        else:
            result.migrated += 1


async def _copy_live(stores: Stores, source: Route, src: Backend, dst: Backend, key: str,
                     transform: Transform | None, slots: asyncio.Semaphore, result: MigrateResult) -> None:
    live = stores.live
    assert live is not None
    async with slots, live.locks.hold(key):
        if live.queue.pending(key) is not None:
            result.skipped += 1  # a live write is on its way; the replayer copies its latest state
            return
        # When the target takes this key's writes, what it holds is newer; if it lacks the key, the
        # source's copy is the only one (a delete through the target reaches both stores).
        if stores.truth(key) is not source and await dst.has(key):
            result.skipped += 1
            return
        try:
            value = await src.get(key)  # the current state, read under the lock
            if value is None:
                result.skipped += 1  # deleted since the scan: never bring it back
                return
            wanted = _transformed(transform, key, value)
            current = await dst.get(key)
            if current is not None and documents_equal(current, wanted):
                result.skipped += 1
                return
            await dst.set(key, wanted)
            stored = await dst.get(key)
        except Exception as exc:
            _error(result, key, str(exc))
            return
        if stored is None or not documents_equal(stored, wanted):
            _error(result, key, "read-back differs from what was written")
        else:
            result.migrated += 1
