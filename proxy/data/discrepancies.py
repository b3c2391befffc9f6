"""Every difference shadow mode finds: a durable, bounded JSONL log in state_dir and a running report.

Recording never blocks a request: a discrepancy goes into a bounded buffer that a background task
appends to the log (and fsyncs) a few times a second; what overflows the buffer is counted in
`dropped`. The log rotates at `max_bytes`, keeping `keep` old files, so it never fills the disk.

The rate is discrepancies over compared operations, so the log holds both: beside the discrepancy
lines, a line `{"time": T, "compared": {"get": N, ...}}` carries the operations compared since the
previous such line. A report read from the log alone (proxy stopped, restarted, or `--since T`)
therefore counts the two over the same window, and its rate never mixes one run's discrepancies
with another run's comparisons. The report (totals by operation and kind, the first and the latest
samples) is what `turnout discrepancies` prints.

A record holds the documents themselves only when the config says `discrepancies: {record_values:
true}` (contract §5); otherwise, for each side, its size and digest, and the JSON paths where the two
differ (proxy.data.valuediff). Keys stay in this local log (operators triage by key); answers that are
no stored document (a Has's presence, a Keys listing's counts) are shown as before. The log's files
are the proxy's alone (0600, in a 0700 state_dir).

A record is also a triage record (proxy.data.triage): the routing decision (primary `route`,
`secondary`, `reason`, `bucket`, flags `revision`), the trace id of the call, and the key's recent
writes as the replication queue saw them; `turnout discrepancies show KEY` prints a key's records.

A shadow that lacks a key only because the backfill has not reached it (proxy.data.backfill) is no
discrepancy: it is counted as `not_migrated`, by operation, and the compared-counts line carries
those counts too (`"not_migrated": {...}`), so a report from the log shows them.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from proxy.background import BackgroundTask
from proxy.data.valuediff import differing_paths, digest
from proxy.safety.wilson import wilson
from proxy.statedir import DISCREPANCY_LOG_FILE, WORKERS_DIR, make_private_dir

log = logging.getLogger(__name__)

#: Each side's answer is trimmed to this many characters in the log and the report.
TRIM = 200
SAMPLES = 5
FLUSH_INTERVAL_S = 0.2
#: Compared-operation counts alone (no discrepancy to write) reach the log at most this often.
COMPARED_INTERVAL_S = 1.0
#: Discrepancies waiting for the flusher; beyond it (a stalled disk) they are counted as dropped.
MAX_BUFFERED = 10_000
#: The log is appended to, created private, and never written through a link planted in its place.
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def trim(text: str | None) -> str | None:
    if text is None or len(text) <= TRIM:
        return text
    return text[:TRIM] + f"... ({len(text)} chars)"


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One difference shadow mode found. For a stored document (a Get's answer), `primary` and
    `shadow` hold it, trimmed, only when values are recorded (`values`); the sizes (bytes) and digests
    are there either way for a side that had one, and `paths` lists where the two documents differ."""

    time: float
    op: str
    key: str
    kind: str
    primary: str | None  # the primary's answer as shown, trimmed (None: absent, or a value not recorded)
    shadow: str | None
    route: str  # the backend whose answer was returned
    revision: str
    detail: str = ""
    primary_size: int | None = None  # bytes of the primary's document (None: absent, or no document)
    shadow_size: int | None = None
    primary_digest: str | None = None
    shadow_digest: str | None = None
    paths: tuple[str, ...] = ()  # where the two documents differ (value_mismatch), bounded
    paths_truncated: bool = False
    values: bool = True  # False: a document's text was not recorded (record_values off)
    # Triage (proxy.data.triage): the rest of the routing decision, the caller's trace, the key's writes.
    secondary: str = ""  # the other backend: the shadow
    reason: str = ""  # the route's reason (contract §4: turnout.route.reason)
    bucket: int | None = None
    trace_id: str | None = None  # 32 hex digits; None when the call had no trace
    writes: tuple[dict[str, Any], ...] = ()  # oldest first: time, op, source, target, state (pending/settled)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def document_fields(primary: bytes | None, shadow: bytes | None, record_values: bool) -> dict[str, Any]:
    """What a record of two documents (either may be absent) holds: sizes, digests and differing paths,
    and their text (trimmed) only with record_values."""
    fields: dict[str, Any] = {
        "primary": show_document(primary) if record_values else None,
        "shadow": show_document(shadow) if record_values else None,
        "primary_size": None if primary is None else len(primary),
        "shadow_size": None if shadow is None else len(shadow),
        "primary_digest": None if primary is None else digest(primary),
        "shadow_digest": None if shadow is None else digest(shadow),
        "values": record_values,
    }
    if primary is not None and shadow is not None:
        differences = differing_paths(primary, shadow)
        fields["paths"], fields["paths_truncated"] = differences.paths, differences.truncated
    return fields


def show_document(value: bytes | None) -> str | None:
    return None if value is None else trim(value.decode("utf-8", errors="replace"))


class Report:
    """Counts and samples of discrepancies, and of the operations compared."""

    def __init__(self) -> None:
        self.compared: Counter[str] = Counter()
        self.not_migrated: Counter[str] = Counter()  # by op: the backfill had not reached the key (no discrepancy)
        self.by_op: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.first: list[Discrepancy] = []
        self.latest: deque[Discrepancy] = deque(maxlen=SAMPLES)

    def add(self, discrepancy: Discrepancy) -> None:
        self.by_op[discrepancy.op] += 1
        self.by_kind[discrepancy.kind] += 1
        if len(self.first) < SAMPLES:
            self.first.append(discrepancy)
        self.latest.append(discrepancy)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    @property
    def rate(self) -> float:
        compared = sum(self.compared.values())
        return self.total / compared if compared else 0.0

    def to_document(self) -> dict[str, Any]:
        compared = sum(self.compared.values())
        interval = wilson(self.total, compared)
        return {
            "total": self.total,
            "compared": compared,
            # Unknown, not zero, when discrepancies were logged without their compared counts.
            "rate": self.rate if compared or not self.total else None,
            # The rate's 95 % Wilson interval: "0 of 40 compared" is not 0 % (proxy.safety.wilson).
            **({"rate_bound_low": interval.low, "rate_bound_high": interval.high} if compared else
               {"rate_bound_low": None, "rate_bound_high": None}),
            "compared_by_op": dict(self.compared),
            "not_migrated": sum(self.not_migrated.values()),
            "not_migrated_by_op": dict(self.not_migrated),
            "by_op": dict(self.by_op),
            "by_kind": dict(self.by_kind),
            "first": [asdict(d) for d in self.first],
            "latest": [asdict(d) for d in self.latest],
        }


class DiscrepancyLog:
    """The log of one process, and the running report; `record_values` says whether records made for
    it may hold documents (the config's `discrepancies.record_values`)."""

    def __init__(self, folder: Path, max_bytes: int = 10 * 1024 * 1024, keep: int = 3,
                 record_values: bool = False) -> None:
        self.path = folder / DISCREPANCY_LOG_FILE
        self.record_values = record_values
        self.max_bytes = max_bytes
        self.keep = keep
        self.report = Report()
        self.dropped = 0  # lines that could not be written (counted, never silent)
        self._buffer: list[Discrepancy] = []
        self._compared: Counter[str] = Counter()  # compared since the last compared line
        self._not_migrated: Counter[str] = Counter()  # not migrated yet, since the last compared line
        self._compared_written = 0.0  # monotonic time of the last compared line
        self._flusher = BackgroundTask(self._flush_forever, "discrepancy-log")

    def compared(self, op: str) -> None:
        self.report.compared[op] += 1
        self._compared[op] += 1

    def not_migrated(self, op: str) -> None:
        """A comparison just counted (compared) was the backfill not done yet: count it apart, and take
        its compared count back, so that it is in neither side of the rate. Called in the same turn of
        the loop as compared(), so no flush falls between the two."""
        for counts in (self.report.compared, self._compared):
            if counts[op] > 1:
                counts[op] -= 1
            else:
                counts.pop(op, None)
        self.report.not_migrated[op] += 1
        self._not_migrated[op] += 1

    def record(self, discrepancy: Discrepancy) -> None:
        self.report.add(discrepancy)
        if len(self._buffer) >= MAX_BUFFERED:
            self.dropped += 1
            return
        self._buffer.append(discrepancy)

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
        await self.flush()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush(final=False)

    async def flush(self, final: bool = True) -> None:
        """Append what is buffered; compared counts alone wait COMPARED_INTERVAL_S unless `final`."""
        now = time.monotonic()
        counts_due = bool(self._compared or self._not_migrated) and (
            final or self._buffer or now - self._compared_written >= COMPARED_INTERVAL_S)
        if not self._buffer and not counts_due:
            return
        batch, self._buffer = self._buffer, []
        lines = [d.to_json() for d in batch]
        if counts_due:
            counts: dict[str, Any] = {"time": time.time(), "compared": dict(self._compared)}
            if self._not_migrated:
                counts["not_migrated"] = dict(self._not_migrated)
            lines.append(json.dumps(counts))
            self._compared, self._not_migrated = Counter(), Counter()
            self._compared_written = now
        try:
            await asyncio.to_thread(self._append, lines)
        except OSError as exc:
            self.dropped += len(batch)
            log.warning("cannot write %d discrepancies to %s: %s", len(batch), self.path, exc)

    def _append(self, lines: list[str]) -> None:
        make_private_dir(self.path.parent)
        fd = os.open(self.path, _APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            os.fchmod(fd, 0o600)  # whatever the umask, or the mode a log of an older proxy was left with
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        if size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{DISCREPANCY_LOG_FILE}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{DISCREPANCY_LOG_FILE}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{DISCREPANCY_LOG_FILE}.1"))
        self.path.with_name(f"{DISCREPANCY_LOG_FILE}.{self.keep + 1}").unlink(missing_ok=True)


def _log_lines(folder: Path, since: float) -> Iterator[dict[str, Any]]:
    """Each well-formed line from `since` on, oldest first, across rotated files and across the logs
    of the proxy's other workers (`turnout serve --workers N`: each writes its own, in its folder)."""
    workers = sorted(path for path in (folder / WORKERS_DIR).glob("*") if path.is_dir())
    logs = [_one_log(log_folder, since) for log_folder in (folder, *workers)]
    return heapq.merge(*logs, key=lambda doc: float(doc["time"]))


def _one_log(folder: Path, since: float) -> Iterator[dict[str, Any]]:
    rotated = [p for p in folder.glob(DISCREPANCY_LOG_FILE + ".*") if p.suffix[1:].isdigit()]
    for path in [*sorted(rotated, key=lambda p: -int(p.suffix[1:])), folder / DISCREPANCY_LOG_FILE]:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash mid-append
            if isinstance(doc, dict) and isinstance(doc.get("time"), int | float) and doc["time"] >= since:
                yield doc


def _discrepancy(doc: dict[str, Any]) -> Discrepancy | None:
    """The discrepancy a log line holds; None for a compared-counts line or one of another shape."""
    if "compared" in doc:
        return None
    if isinstance(doc.get("paths"), list):
        doc = {**doc, "paths": tuple(str(path) for path in doc["paths"])}
    if isinstance(doc.get("writes"), list):
        doc = {**doc, "writes": tuple(write for write in doc["writes"] if isinstance(write, dict))}
    try:
        return Discrepancy(**doc)
    except TypeError:
        return None


def read_log(folder: Path, since: float = 0.0) -> Iterator[Discrepancy]:
    """The logged discrepancies from `since` on, oldest first, across rotated files and workers."""
    for doc in _log_lines(folder, since):
        if (discrepancy := _discrepancy(doc)) is not None:
            yield discrepancy


def report_from_log(folder: Path, since: float = 0.0) -> Report:
    """The report of the logged window: discrepancies and the operations compared in it."""
    report = Report()
    for doc in _log_lines(folder, since):
        compared = doc.get("compared")
        if isinstance(compared, dict):
            report.compared.update({str(op): int(n) for op, n in compared.items() if isinstance(n, int)})
            not_migrated = doc.get("not_migrated")
            if isinstance(not_migrated, dict):
                report.not_migrated.update({str(op): n for op, n in not_migrated.items() if isinstance(n, int)})
        elif (discrepancy := _discrepancy(doc)) is not None:
            report.add(discrepancy)
    return report



def records_of(folder: Path, key: str, since: float = 0.0) -> list[Discrepancy]:
    """Every logged discrepancy of key from `since` on, oldest first, from every worker's log: what
    `turnout discrepancies show KEY` and the page's triage show."""
    # The key is looked at before a record is made of a line: most lines are of other keys.
    return [d for doc in _log_lines(folder, since)
            if doc.get("key") == key and (d := _discrepancy(doc)) is not None]
