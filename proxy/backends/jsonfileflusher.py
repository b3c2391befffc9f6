"""The legacy store's journal at work: writes appended to it, the file rewritten from memory now and then.

A batch of writes is acknowledged once appended and fsynced to the journal (proxy/backends/
jsonjournal.py; concurrent writers share one fsync through group commit). The file is rewritten
whole from memory, atomically, about every flush_interval and at close: a rewrite is due
flush_interval after the oldest write the file lacks, and is started a little early (`LEAD_S`) so
that the event loop firing its timer late never takes the file's lag behind the journal above
flush_interval plus that rewrite (unless a rewrite fails, or the loop is held up longer than the
lead). After each rewrite the journal is replaced by one holding only the writes the file still
lacks. A failed rewrite changes nothing in memory; the journal keeps the writes and it is retried.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time

from proxy.backends.base import Key, Value
from proxy.backends.groupcommit import GroupCommit
from proxy.backends.jsonfileindex import FileIndex, Op, Pending, apply_op, log
from proxy.backends.jsonjournal import Entry, JournalWriter, encode_entry, encode_flushed
from proxy.backends.legacyfile import MemberNames, Signature, commit_staged, discard_staged, stage_store
from proxy.errors import BackendUnavailable

#: How early a rewrite starts before it is due. The event loop fires a timer late when other
#: callbacks run first (about a millisecond measured, more on a busy proxy); started on time, a
#: rewrite would take the file past flush_interval plus the rewrite by that much. It is small next to
#: any flush_interval, so rewrites still start at least flush_interval - LEAD_S apart; on a tiny
#: interval it is a tenth of it (see JournalFlusher._lead).
LEAD_S = 0.01
#: How many times close tries its last rewrite when the old application keeps changing the file.
CLOSE_ATTEMPTS = 5


class JournalFlusher:
    """Appends a store's writes to its journal and keeps its file at most flush_interval behind."""

    def __init__(self, index: FileIndex, journal: JournalWriter, interval: float, group_commit: bool) -> None:
        self._index = index
        self._journal = journal
        self._interval = interval
        self.commits: GroupCommit[Op] = GroupCommit(self.append, f"jsonfile {index.path}", enabled=group_commit)
        # Appends go on while the file is rewritten: the poll waits only for rewrites.
        self.file_lock = asyncio.Lock()
        self._names = MemberNames()
        self._next_seq = 1
        self._dirty = asyncio.Event()
        self.rewrites = 0
        #: Seconds from each rewrite's oldest write being acknowledged to the file holding it.
        self.lags: collections.deque[float] = collections.deque(maxlen=10_000)
        #: Seconds each rewrite took, from its start (reading the old application's change first) to the rename.
        self.rewrite_seconds: collections.deque[float] = collections.deque(maxlen=10_000)
        #: Seconds each rewrite started after it was scheduled (the event loop's timer and other work).
        self.rewrite_late: collections.deque[float] = collections.deque(maxlen=10_000)
        self._rewriter = asyncio.create_task(self._rewrite_loop(), name=f"jsonfile-rewrite {index.path.name}")

    # -- writes: one append and fsync per batch ---------------------------------------------------

    async def append(self, ops: list[Op]) -> list[bool]:
        """The journal's flush: one append and fsync for the batch, then the writes are served."""
        index = self._index
        if self._journal.broken:
            # A rotation could not reopen the journal: start a sound one holding what the file lacks.
            through = index.unflushed[0].entry.seq - 1 if index.unflushed else self._next_seq - 1
            file_values = {key: value for key, value in index.bases.items() if value is not None}
            await self._rotate(index.sig, through, index.unflushed, file_values)
        data, bases = index.data, index.bases
        entries = []
        wall = time.time_ns()
        for key, value in ops:
            # Nothing changes data or bases before this batch is applied: they change only between
            # batches (the commit lock) and on the event loop.
            base = bases[key] if key in bases else data.get(key)
            entries.append(Entry(self._next_seq, key, value, base, wall))
            self._next_seq += 1
        await asyncio.to_thread(self._journal.append, b"".join(encode_entry(entry) for entry in entries))
        acked = time.monotonic()
        existed = []
        for entry in entries:
            existed.append(entry.key in data)
            bases.setdefault(entry.key, entry.base)
            apply_op(data, entry.key, entry.value)
            index.unflushed.append(Pending(entry, acked))
        self._dirty.set()
        return existed

    # -- the old application's changes --------------------------------------------------------

    async def catch_up(self) -> None:
        """Serve the file's new contents, with the journaled writes that survive them. Under the file lock."""
        index = self._index
        changed = await asyncio.to_thread(index.read_if_changed)
        if changed is None:
            return
        async with self.commits.lock:
            if not index.unflushed:
                index.adopt(changed)
                return
            kept, file_values = index.merge(changed)
            # The journal now applies over this file: its entries' bases must be this file's values,
            # so that a later change (or a replay after a crash) is judged against what it replaced.
            through = kept[0].entry.seq - 1 if kept else self._next_seq - 1
            await self._rotate(index.sig, through, kept, file_values)

    # -- the rewrites of the file ----------------------------------------------------------------

    async def _rewrite_loop(self) -> None:
        interval = self._interval
        while True:
            await self._dirty.wait()
            if not self._index.unflushed:
                self._dirty.clear()
                continue
            # Started a little early: a timer fired late must not take the file past its bound.
            start_at = self._index.unflushed[0].acked + interval - self._lead()
            delay = start_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.rewrite_late.append(max(0.0, time.monotonic() - start_at))
            try:
                await self.rewrite(final=False)
            except BackendUnavailable as exc:
                # The writes are safe in the journal; the file lags until a rewrite succeeds.
                log.warning("%s; the journal keeps the writes, retrying in %.1f s", exc, interval)
                await asyncio.sleep(interval)
            except Exception:
                # Never let the rewriter die silently: the file would lag until shutdown.
                log.exception("jsonfile %s: rewrite failed; the journal keeps the writes", self._index.path)
                await asyncio.sleep(interval)

    def _lead(self) -> float:
        """How long before it is due a rewrite starts: LEAD_S, or a tenth of a shorter interval.

        Not the rewrite's own duration: the bound (flush_interval plus the rewrite that carries a
        write) allows for that, and starting earlier by it would rewrite the file more often than
        flush_interval."""
        return min(LEAD_S, self._interval / 10)

    async def rewrite(self, final: bool) -> bool:
        """Rewrite the file from memory and rotate the journal (delete it when final); False when
        the old application changed the file meanwhile, so the rewrite was dropped, to be redone."""
        index, journal, path = self._index, self._journal, self._index.path
        started = time.monotonic()
        async with self.file_lock:
            await self.catch_up()
            if not index.unflushed:
                if final:
                    await asyncio.to_thread(journal.remove)
                return True
            async with self.commits.lock:  # between two batches: every entry appended is applied
                snapshot = dict(index.data)
                through = index.unflushed[-1].entry.seq
                oldest = index.unflushed[0].acked
                base = index.sig
            try:
                staged = await asyncio.to_thread(lambda: stage_store(path, self._names.parts(snapshot)))
            except OSError as exc:
                raise BackendUnavailable(f"jsonfile {path}: rewrite failed: {exc.strerror or exc}") from exc
            try:
                # Named before the rename, so after a crash between the rename and the rotation below
                # a replay knows the file holds every entry through `through`.
                async with self.commits.lock:
                    if not journal.broken:  # else the rotation below starts a sound journal again
                        await asyncio.to_thread(journal.append, encode_flushed(through, staged.sig))
                committed = await asyncio.to_thread(commit_staged, path, staged, base)
            except BaseException as exc:
                discard_staged(staged)
                if isinstance(exc, OSError):
                    raise BackendUnavailable(f"jsonfile {path}: rewrite failed: {exc.strerror or exc}") from exc
                raise
            if not committed:
                log.info("jsonfile %s changed on disk during a rewrite; reading it first", path)
                return False
            index.sig = staged.sig
            self.rewrites += 1
            now = time.monotonic()
            self.lags.append(now - oldest)
            self.rewrite_seconds.append(now - started)
            async with self.commits.lock:
                carried = [p for p in index.unflushed if p.entry.seq > through]
                if final and not carried:
                    index.unflushed, index.bases = [], {}
                    self._dirty.clear()
                    try:
                        await asyncio.to_thread(journal.remove)
                    except OSError as exc:
                        # The journal's flush marker names this file: nothing is replayed twice.
                        log.warning("jsonfile %s: cannot remove the journal (%s)", path, exc.strerror or exc)
                    return True
                await self._rotate(staged.sig, through, carried, snapshot)
            return True

    async def _rotate(self, sig: Signature, through: int, carried: list[Pending], file_data: dict[Key, Value]) -> None:
        """Replace the journal by one based on the file (sig, holding file_data) that holds only the
        carried writes, each re-based on the file's value of its key. Under the commit lock."""
        bases = {p.entry.key: file_data.get(p.entry.key) for p in carried}
        carried = [Pending(dataclasses.replace(p.entry, base=bases[p.entry.key]), p.acked) for p in carried]
        try:
            await asyncio.to_thread(self._journal.start, sig, through,
                                    b"".join(encode_entry(p.entry) for p in carried))
        except OSError as exc:
            # The old journal, flush marker included, still gives the same file: no write is lost.
            log.warning("jsonfile %s: journal rotation failed (%s); it keeps growing until the next one",
                        self._index.path, exc.strerror or exc)
        finally:
            # Whether or not the journal was rotated, these are the writes the file lacks.
            self._index.unflushed, self._index.bases = carried, bases
            if not carried:
                self._dirty.clear()

    # -- close ------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop rewriting on a timer, put every journaled write into the file, close the journal."""
        async with self.file_lock:  # so the rewriter is never stopped half-way through a rewrite
            self._rewriter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._rewriter
        await self._last_rewrite()

    def close_journal(self) -> None:
        self._journal.close()

    async def _last_rewrite(self) -> None:
        for _ in range(CLOSE_ATTEMPTS):
            try:
                if await self.rewrite(final=True):
                    return
            except (BackendUnavailable, OSError) as exc:
                log.error("%s; %d writes stay in the journal, replayed into the file at the next open",
                          exc, len(self._index.unflushed))
                return
        log.error("jsonfile %s kept changing on disk at close; %d writes stay in the journal, replayed into the "
                  "file at the next open", self._index.path, len(self._index.unflushed))
