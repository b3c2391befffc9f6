"""Which shadow differences are a backfill not done yet rather than a discrepancy.

While a migrate fills the new store, shadow mode sees keys that the new store does not hold yet: a
Get or Has of such a key finds it only in the old store, and a Delete of it hears "did not exist"
from the new one. Recorded as `missing_in_shadow`, these drown the real differences (214 in one run
of issue 15). The rule here tells them apart:

    A Get, Has or Delete whose shadow (the backfill's target) lacks a key its primary (the backfill's
    source) holds is *not migrated yet* when the backfill has not reached the key AND no write through
    the proxy touched the key (for a Delete: no write but this Delete itself). It is counted apart
    (`not_migrated` in the report, status and `turnout_shadow_not_migrated_total`), it is neither a
    discrepancy nor a compared operation (so it is not in the rate), and nothing is logged for it.
    A Keys listing is when every key the shadow's lacks is, and the shadow's lists none the primary's
    lacks. Every other difference stays a discrepancy: a key the backfill reached, a key any write
    touched, a value that differs, a key the shadow has and the primary lacks, a failing shadow.

**Reached** is read from the migrate's checkpoint in state_dir (`statedir.CHECKPOINT_FILE`), which the
migrate writes as it starts and at least every second while it runs, in worker 0 or offline, and which
every worker can read and a restart keeps:

- a run in progress, or interrupted and not finished (a later run resumes it), its cursor at L: a key
  is not reached when it sorts after L (the migrate walks keys in order; before its first page, no key
  is reached). For a source whose scan is unordered (Redis, jsondir, grpc) the cursor says nothing of
  a key, so once it moved every key counts as reached (the safe side);
- a run that finished, complete or with errors: every key is reached (the keys that failed are real
  differences, which verify reports too). `migrate --restart` starts a new backfill: the operator
  says the target is to be filled again, and keys past the new cursor are not reached;
- no checkpoint (no backfill ever started here): nothing is explained. A key the new store lacks
  while no backfill is on its way to it is a difference an operator should see (shadow mode turned on
  before any migrate, stores that drifted apart); the rule is for the noise of a backfill running, and
  a `turnout migrate --live` writes its checkpoint as it starts, so that noise stops at once.

The checkpoint is read at most every CURSOR_TTL_S, and the migrate writes it at most every second, so
the cursor seen may lag the copy by a second and a page: a key copied in that moment and then lost
from the target behind the proxy's back is counted as not migrated until the cursor moves on, and
reported after.

**Touched** is a table in state_dir (TOUCHED_FILE) that every write through the proxy that reaches
both stores (shadow write or replication intent; not under the kill switch, where new takes no
write) marks before its primary write. The table is shared memory (a mapped file) so that a key
written on worker 1 counts as touched on worker 0 at once, survives restarts, and is bounded: SLOTS
one-byte counters, each key marking two slots (the key's CRC-32 split two ways). A key's touches
are the smaller of its two counters. Two keys that share both slots make each other look touched,
which only ever reports a difference (never hides one): as more distinct keys are written, more
untouched keys look touched (about 1 % of them after 200 000 distinct keys written, 14 % after a
million, 73 % after four million), and the rule falls back towards reporting everything, as without
it. Counters stop at 2, all the rule asks (none; one, a Delete's own; more), so a key written again
and again reads its slots and writes nothing. A process crash loses no mark (the page cache holds
it); a machine crash may lose the marks made since the kernel last wrote the pages back. The table is
never cleared by the proxy: remove the file while it is stopped to start afresh.

The cursor a comparison is judged against is the one of when its shadow call was issued: a shadow
read slower than the cursor's lag (a loaded machine) would otherwise find a key absent before the
copy and be judged after the cursor moved past it, a discrepancy that was only lag. Taking it costs a
shadow call one clock read (the cursor is cached for CURSOR_TTL_S); the rule itself runs only once a
comparison found the shadow missing a key. A write that reaches both stores pays one CRC-32 and at
most two byte updates.
"""

from __future__ import annotations

import mmap
import os
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy import statedir
from proxy.backends.base import Backend
from proxy.routing.router import Decision, Op, Route
from proxy.statedir import CHECKPOINT_FILE

#: The touched-keys table in state_dir (a file of SLOTS bytes, mapped by every worker).
TOUCHED_FILE = "backfill-touched.bin"
#: One-byte counters in the table: 4 MiB of shared memory.
SLOTS = 1 << 22
_SHIFT = 32 - 22  # SLOTS is 2**22: the high 22 bits of a 32-bit mix
_MASK = SLOTS - 1
_GOLDEN = 0x9E3779B1  # Knuth's multiplicative hash: spreads the CRC's bits for the second slot
#: Where a counter stops: the rule tells apart no write, one (a Delete's own) and more.
_SATURATED = 2
#: How long a checkpoint read stays in use (s): the rule runs per missing key, the file changes per second.
CURSOR_TTL_S = 0.25
#: The ops the rule may explain by their key: a key read, and a Delete's `existed` (and Keys, by its listing).
_KEY_OPS = frozenset({Op.GET, Op.HAS, Op.DELETE})


class TouchedKeys:
    """Which keys a write through the proxy touched: a counting table of two slots per key, in a mapped
    file that every worker shares (or in memory when there is no file, for a proxy without state)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        if path is None:
            self._table: mmap.mmap | bytearray = bytearray(SLOTS)
            return
        statedir.create_private_file(path)
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        try:
            if os.fstat(fd).st_size < SLOTS:
                os.ftruncate(fd, SLOTS)  # zeros: a sparse file until written
            self._map = self._table = mmap.mmap(fd, SLOTS, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)  # the mapping keeps the file

    def touch(self, key: str) -> None:
        """Count a write of key (call before its primary write)."""
        first, second = _slots(key)
        table = self._table
        # A read and a write of one byte: two workers bumping one slot at once may count once, which a
        # key's own writes never do (a key has one writer at a time across workers).
        if (count := table[first]) < _SATURATED:
            table[first] = count + 1
        if (count := table[second]) < _SATURATED:
            table[second] = count + 1

    def writes(self, key: str) -> int:
        """How many writes of key the table holds, at least (collisions only add)."""
        first, second = _slots(key)
        return min(self._table[first], self._table[second])

    def fill(self) -> float:
        """The share of slots marked: how often an untouched key looks touched, roughly squared."""
        table = self._table
        return 1.0 - table.count(0) / SLOTS if isinstance(table, bytearray) else 1.0 - bytes(table).count(0) / SLOTS

    def close(self) -> None:
        """Write the marks back to the file now. The mapping stays: a comparison finishing late in
        shutdown may still read it, and the process's exit unmaps it."""
        if self._map is not None:
            self._map.flush()


def _slots(key: str) -> tuple[int, int]:
    try:
        data = key.encode()
    except UnicodeEncodeError:  # a lone surrogate, which no key from the wire holds (protobuf checks UTF-8)
        data = key.encode("utf-8", "surrogatepass")
    h = zlib.crc32(data)
    return h & _MASK, ((h * _GOLDEN) & 0xFFFFFFFF) >> _SHIFT


@dataclass(frozen=True, slots=True)
class Cursor:
    """How far the backfill into `source.other` got: `started` False when none started (nothing is
    explained then); `finished` when its last run ended (complete or not), and every key is reached;
    else `last_key` is the last key it copied (None: none yet)."""

    source: Route = Route.OLD
    started: bool = False
    finished: bool = False
    last_key: str | None = None

    def reached(self, key: str, ordered: bool) -> bool:
        """Whether the backfill may have copied key (see the module docstring)."""
        if not self.started or self.finished:
            return True
        if self.last_key is None:
            return False  # started, nothing copied yet
        return key <= self.last_key if ordered else True

    @classmethod
    def of(cls, checkpoint: Any) -> Cursor:
        """The cursor a checkpoint document says (None: there is none)."""
        if checkpoint is None:
            return cls()
        if not isinstance(checkpoint, dict) or checkpoint.get("source") not in (Route.OLD, Route.NEW):
            return cls(started=True, finished=True)  # a file of another shape: say nothing is explained
        source = Route(checkpoint["source"])
        if checkpoint.get("complete") or "finished" in checkpoint:
            return cls(source, started=True, finished=True)
        last_key = checkpoint.get("last_key")
        return cls(source, started=True, last_key=last_key if isinstance(last_key, str) else None)


class BackfillRule:
    """The rule of the module docstring for one process: the checkpoint it reads, the touched table it
    shares with the other workers, and the backends (whose scan order the cursor depends on)."""

    def __init__(self, state_dir: Path | None, backends: Mapping[Route, Backend],
                 touched: TouchedKeys | None = None, clock: Any = time.monotonic) -> None:
        self.state_dir = state_dir
        self._ordered = {route: backend.ordered_scan for route, backend in backends.items()}
        self.touched = touched if touched is not None else TouchedKeys(
            None if state_dir is None else state_dir / TOUCHED_FILE)
        self.touch = self.touched.touch  # the table's own method: it runs on every write
        self._clock = clock
        self._cursor = Cursor(started=True, finished=True)
        self._read_at: float | None = None

    def cursor(self) -> Cursor:
        """The backfill's cursor, read again when older than CURSOR_TTL_S."""
        if self.state_dir is None:
            return self._cursor  # no state: nothing is explained
        now = self._clock()
        if self._read_at is None or now - self._read_at >= CURSOR_TTL_S:
            try:
                self._cursor = Cursor.of(statedir.read_json(self.state_dir / CHECKPOINT_FILE))
            except (OSError, ValueError):
                self._cursor = Cursor(started=True, finished=True)  # unreadable: explain nothing
            self._read_at = now
        return self._cursor

    def not_migrated(self, op: Op, key: str, decision: Decision, primary: Any = None, shadow: Any = None,
                     cursor: Cursor | None = None) -> bool:
        """Whether a shadow that lacks key, which the primary holds, is the backfill not done yet. For a
        Keys listing (key: its prefix), `primary` and `shadow` are the two listings: it is when the
        shadow's holds no key the primary's lacks, and each key it lacks is one the rule explains.
        `cursor` is the backfill's as the shadow call was issued (None: as it is now)."""
        if cursor is None:
            cursor = self.cursor()
        if op is Op.KEYS:
            return self._listing_not_migrated(cursor, decision, primary, shadow)
        if op not in _KEY_OPS:
            return False
        if decision.primary is not cursor.source or decision.secondary is not cursor.source.other:
            return False  # the shadow is not the store being filled
        if cursor.reached(key, self._ordered.get(cursor.source, False)):
            return False
        # A Delete has marked its own write already; a read marks nothing.
        return self.touched.writes(key) <= (1 if op is Op.DELETE else 0)

    def _listing_not_migrated(self, cursor: Cursor, decision: Decision, primary: Any, shadow: Any) -> bool:
        if primary is None or shadow is None or decision.primary is not cursor.source or (
                decision.secondary is not cursor.source.other):
            return False
        listed, shadow_listed = set(primary), set(shadow)
        if not shadow_listed <= listed:
            return False  # a key only the shadow lists: no lag of a backfill
        ordered, writes = self._ordered.get(cursor.source, False), self.touched.writes
        return all(not cursor.reached(key, ordered) and not writes(key) for key in listed - shadow_listed)

    def close(self) -> None:
        self.touched.close()
