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
from proxy.statedir import DISCREPANCY_LOG_FILE, WORKERS_DIR

log = logging.getLogger(__name__)

#: Each side's answer is trimmed to this many characters in the log and the report.
TRIM = 200
SAMPLES = 5
FLUSH_INTERVAL_S = 0.2
#: Compared-operation counts alone (no discrepancy to write) reach the log at most this often.
COMPARED_INTERVAL_S = 1.0
#: Discrepancies waiting for the flusher; beyond it (a stalled disk) they are counted as dropped.
MAX_BUFFERED = 10_000


def trim(text: str | None) -> str | None:
    if text is None or len(text) <= TRIM:
        return text
    return text[:TRIM] + f"... ({len(text)} chars)"


@dataclass(frozen=True, slots=True)
class Discrepancy:
    time: float
    op: str
    key: str
    kind: str
    primary: str | None  # the primary's answer, trimmed (None: absent)
    shadow: str | None
    route: str  # the backend whose answer was returned
    revision: str
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


class Report:
    """Counts and samples of discrepancies, and of the operations compared."""

    def __init__(self) -> None:
        self.compared: Counter[str] = Counter()
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
        return {
            "total": self.total,
            "compared": compared,
            # Unknown, not zero, when discrepancies were logged without their compared counts.
            "rate": self.rate if compared or not self.total else None,
            "compared_by_op": dict(self.compared),
            "by_op": dict(self.by_op),
            "by_kind": dict(self.by_kind),
            "first": [asdict(d) for d in self.first],
            "latest": [asdict(d) for d in self.latest],
        }


class DiscrepancyLog:
    def __init__(self, folder: Path, max_bytes: int = 10 * 1024 * 1024, keep: int = 3) -> None:
        self.path = folder / DISCREPANCY_LOG_FILE
        self.max_bytes = max_bytes
        self.keep = keep
        self.report = Report()
        self.dropped = 0  # lines that could not be written (counted, never silent)
        self._buffer: list[Discrepancy] = []
        self._compared: Counter[str] = Counter()  # compared since the last compared line
        self._compared_written = 0.0  # monotonic time of the last compared line
        self._flusher = BackgroundTask(self._flush_forever, "discrepancy-log")

    def compared(self, op: str) -> None:
        self.report.compared[op] += 1
        self._compared[op] += 1

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
        counts_due = bool(self._compared) and (final or self._buffer or now - self._compared_written
                                               >= COMPARED_INTERVAL_S)
        if not self._buffer and not counts_due:
            return
        batch, self._buffer = self._buffer, []
        lines = [d.to_json() for d in batch]
        if counts_due:
            lines.append(json.dumps({"time": time.time(), "compared": dict(self._compared)}))
            self._compared = Counter()
            self._compared_written = now
        try:
            await asyncio.to_thread(self._append, lines)
        except OSError as exc:
            self.dropped += len(batch)
            log.warning("cannot write %d discrepancies to %s: %s", len(batch), self.path, exc)

    def _append(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
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
        elif (discrepancy := _discrepancy(doc)) is not None:
            report.add(discrepancy)
    return report

