"""Bulk migrate: stream one store into the other in batches, resumable, throttled, validated.

Offline (no proxy) a batch is copied as it was read. Live (inside the proxy) a batch is copied
under its keys' locks (taken in one order, so no writer of one key and no other batch can wait in a
circle with it), each key from its current state read under them, and only when no write of it is
still being replicated: a backfill then never overwrites a newer live write and never brings back a
deleted key. A live batch costs one pending check, one read of each store and one write (and a
read-back, with read_back), and a write of one of its keys waits at most that long (the batch size
bounds it). Offline into a target that held nothing, a batch is loaded as keys the target lacks
(`load_many`: one COPY into a PostgreSQL table), with no read of the target first.

Up to `concurrency` batches are in flight at once offline, one live (its locks held as briefly as
the batch allows); the checkpoint only ever names the last key of a run of batches that have all
finished.

A batch counts as migrated once the target acknowledged its write (a committed transaction, an
MSET's OK, a journal fsync): that is each store's promise that it holds the documents. `read_back`
also reads every written batch back and compares it, which costs about as much as the write again
(bench/migrate_servers.py measures both); `turnout verify`, which the cutover requires clean, reads
both stores back anyway, and it is the check that also sees what changed after the copy.

Re-running is safe: a key whose target already holds an equal document is skipped, and a
checkpoint in state_dir lets an interrupted run resume after the last key it finished (for stores
whose scans are ordered; a run killed outright, at most CHECKPOINT_EVERY_S of copying before that)
and a run that finished without errors return at once. A run that left errors is not complete:
the next one scans again, skipping what is already there, so the keys that failed are tried again.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from proxy import statedir
from proxy.backends.base import Backend, Item, get_many, load_many
from proxy.data.compare import documents_equal
from proxy.errors import InvalidArgument
from proxy.migration.stores import Stores
from proxy.progress import Progress
from proxy.routing.router import Route
from proxy.statedir import CHECKPOINT_FILE

MAX_ERROR_SAMPLES = 100
#: The most keys a live copy holds the locks of at once, whatever the batch size: a write of one of
#: them waits for the whole page's copy (bench/live_migrate.py measures the hold per page size:
#: about 20 ms at 1000 keys into SQLite, half that at the default batch of 500).
MAX_LIVE_PAGE = 1000

#: The checkpoint is written at most this often (and when a run stops, by error or interruption):
#: each write is a file and a folder fsync on the event loop, per batch a tenth of a fast run's time.
#: A run killed outright redoes at most this long of copying, which is harmless: a key whose target
#: already holds an equal document is skipped, and a live copy decides each key from its current state.
CHECKPOINT_EVERY_S = 1.0

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
    """`module:function`, called as function(key, document) -> document.

    The module is looked up on sys.path and in the current folder (an installed `turnout` script
    does not put it on sys.path, `python -m` does)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise InvalidArgument(f"--transform: expected module:function, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises as it loads
        raise InvalidArgument(f"--transform {spec}: cannot import {module_name}: {exc}") from None
    function = getattr(module, name, None)
    if function is None or not callable(function):
        raise InvalidArgument(f"--transform {spec}: {module_name} has no function {name}")
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


async def is_empty(backend: Backend) -> bool:
    """Whether backend holds no key at all (one page of one key asked for)."""
    pages = backend.keys("", 1)
    try:
        async for page in pages:
            if page:
                return False
        return True
    finally:
        # Closed at once, not left to the collector: a server store's listing may hold a connection.
        close = getattr(pages, "aclose", None)
        if close is not None:
            await close()


async def migrate(stores: Stores, state_dir: Path, source: Route = Route.OLD, batch_size: int = 500,
                  concurrency: int = 16, rate: float | None = None, transform: Transform | None = None,
                  restart: bool = False, progress: Progress | None = None, read_back: bool = False) -> MigrateResult:
    started = time.monotonic()
    src, dst = stores.backend(source), stores.backend(source.other)
    checkpoint_path = state_dir / CHECKPOINT_FILE
    checkpoint = None if restart else statedir.read_json(checkpoint_path)
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
    # Offline, whole batches overlap (reading the next while earlier ones are written). Inside a
    # proxy one batch at a time: one holds its keys' locks only for its own copy, where overlapping
    # ones would each also wait for the others' writes to the target while holding theirs.
    window = max(1, concurrency) if stores.live is None else 1
    # Offline into a target that holds nothing yet, there is nothing a batch could skip as equal: its
    # read of the target before writing would only ever answer "absent", so it is left out. (Live,
    # writers may fill the target meanwhile, and a live batch reads it under the locks anyway.)
    pre_read = stores.live is not None or not await is_empty(dst)
    in_flight: list[tuple[asyncio.Task[None], Sequence[Item]]] = []
    unwritten: dict[str, Any] | None = None  # the checkpoint due, not yet written (CHECKPOINT_EVERY_S)
    # Written as the run starts, not after its first timed write: shadow mode reads the cursor to tell
    # a key this run has not reached yet from one it copied (proxy.data.backfill), and until then a
    # checkpoint left by a finished run would say every key is reached.
    statedir.write_json(checkpoint_path, {"source": source.value, "last_key": resume_after, "complete": False,
                                           "migrated": 0, "errors": 0})
    written_at = time.monotonic()

    def write_checkpoint() -> None:
        nonlocal unwritten, written_at
        if unwritten is not None:
            statedir.write_json(checkpoint_path, unwritten)
            unwritten, written_at = None, time.monotonic()

    async def finish_oldest() -> None:
        nonlocal unwritten
        task, done_page = in_flight.pop(0)
        await task
        result.total += len(done_page)
        # Batches finish in the order they were started here, so every key up to this one is done.
        unwritten = {"source": source.value, "last_key": done_page[-1][0], "complete": False,
                     "migrated": result.migrated, "errors": result.error_count}
        if time.monotonic() - written_at >= CHECKPOINT_EVERY_S:
            write_checkpoint()
        if progress is not None:
            progress.advance(len(done_page))

    try:
        async for page in src.scan("", batch_size):
            if resume_after is not None:
                skipped_by_checkpoint = sum(1 for key, _ in page if key <= resume_after)
                if progress is not None:
                    progress.advance(skipped_by_checkpoint)
                page = [(key, value) for key, value in page if key > resume_after]
                if not page:
                    continue
            await throttle.take(len(page))
            task = asyncio.create_task(_copy_batch(stores, source, src, dst, page, transform, slots, result,
                                                   pre_read, read_back))
            in_flight.append((task, page))
            if len(in_flight) >= window:
                await finish_oldest()
        while in_flight:
            await finish_oldest()
    except BaseException:
        # Stopped by a failure or an interruption (Ctrl-C): keep how far it got, so the next run
        # resumes there rather than at the last timed write.
        write_checkpoint()
        raise
    finally:
        for task, _ in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*(task for task, _ in in_flight), return_exceptions=True)
    complete = result.error_count == 0
    statedir.write_json(checkpoint_path, {"source": source.value, "last_key": None, "complete": complete,
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
                      transform: Transform | None, slots: asyncio.Semaphore, result: MigrateResult,
                      pre_read: bool = True, read_back: bool = False) -> None:
    if stores.live is not None:
        async with slots:
            for start in range(0, len(page), MAX_LIVE_PAGE):
                await _copy_live_page(stores, source, src, dst, page[start:start + MAX_LIVE_PAGE], transform, result,
                                      read_back)
        return
    if not pre_read and transform is None:
        # Into a target that held nothing: every item as read, loaded as keys the target lacks.
        await _write_batch(dst, list(page), result, read_back, fresh=True)
        return
    existing = await get_many(dst, [key for key, _ in page]) if pre_read else [None] * len(page)
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
    if writes:
        await _write_batch(dst, writes, result, read_back)


async def _write_batch(dst: Backend, writes: list[Item], result: MigrateResult, read_back: bool,
                       fresh: bool = False) -> None:
    try:
        await (load_many(dst, writes) if fresh else dst.set_many(writes))
    except Exception as exc:
        for key, _ in writes:
            _error(result, key, f"write failed: {exc}")
        return
    if read_back:
        _count_read_back(result, writes, await get_many(dst, [key for key, _ in writes]))
    else:
        result.migrated += len(writes)


async def _copy_live_page(stores: Stores, source: Route, src: Backend, dst: Backend, page: Sequence[Item],
                          transform: Transform | None, result: MigrateResult, read_back: bool) -> None:
    """Copy a page under its keys' locks, each key decided by the live rule from its current state:
    one read of each store and one write for the page (and one read-back, if asked)."""
    live = stores.live
    assert live is not None
    keys = [key for key, _ in page]
    async with live.page(keys) as pending:
        # A key with a live write on its way is left to the replayer, which copies its latest state.
        candidates = [key for key in keys if key not in pending] if pending else keys
        result.skipped += len(keys) - len(candidates)
        if not candidates:
            return
        try:
            values = await get_many(src, candidates)  # the current state, read under the locks
            currents = await get_many(dst, candidates)
        except Exception as exc:
            for key in candidates:
                _error(result, key, f"read failed: {exc}")
            return
        writes: list[Item] = []
        for key, value, current in zip(candidates, values, currents, strict=True):
            if value is None:
                result.skipped += 1  # deleted since the scan: never bring it back
                continue
            # When the target takes this key's writes, what it holds is newer; if it lacks the key, the
            # source's copy is the only one (a delete through the target reaches both stores).
            if current is not None and stores.truth(key) is not source:
                result.skipped += 1
                continue
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
            stored = await get_many(dst, [key for key, _ in writes]) if read_back else None
        except Exception as exc:
            for key, _ in writes:
                _error(result, key, f"write failed: {exc}")
            return
    if stored is None:
        result.migrated += len(writes)
    else:
        _count_read_back(result, writes, stored)


def _count_read_back(result: MigrateResult, writes: Sequence[Item], stored: Sequence[bytes | None]) -> None:
    """Count each written key as migrated if the target gave back an equal document, else as an error."""
    for (key, wanted), value in zip(writes, stored, strict=True):
        if value is None or not documents_equal(value, wanted):
            _error(result, key, "read-back differs from what was written")
        else:
            result.migrated += 1
