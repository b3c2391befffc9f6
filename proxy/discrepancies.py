"""Every difference shadow mode finds: a durable, bounded JSONL log in state_dir and a running report.

Recording never blocks a request: a discrepancy goes into a buffer that a background task appends
to the log (and fsyncs) a few times a second. The log rotates at `max_bytes`, keeping `keep` old
files, so it never fills the disk. The report (totals by operation and kind, the first and the
latest samples) is what `turnout discrepancies` prints; the rate is discrepancies over compared
operations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from proxy.background import BackgroundTask

log = logging.getLogger(__name__)

LOG_NAME = "discrepancies.jsonl"
#: Each side's answer is trimmed to this many characters in the log and the report.
TRIM = 200
SAMPLES = 5
FLUSH_INTERVAL_S = 0.2


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

    @classmethod
    def from_json(cls, line: str) -> Discrepancy:
        return cls(**json.loads(line))


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
        return {
            "total": self.total,
            "compared": sum(self.compared.values()),
            "rate": self.rate,
            "compared_by_op": dict(self.compared),
            "by_op": dict(self.by_op),
            "by_kind": dict(self.by_kind),
            "first": [asdict(d) for d in self.first],
            "latest": [asdict(d) for d in self.latest],
        }


class DiscrepancyLog:
    def __init__(self, folder: Path, max_bytes: int = 10 * 1024 * 1024, keep: int = 3) -> None:
        self.path = folder / LOG_NAME
        self.max_bytes = max_bytes
        self.keep = keep
        self.report = Report()
        self.dropped = 0  # lines that could not be written (counted, never silent)
        self._buffer: list[Discrepancy] = []
        self._flusher = BackgroundTask(self._flush_forever, "discrepancy-log")

    def compared(self, op: str) -> None:
        self.report.compared[op] += 1

    def record(self, discrepancy: Discrepancy) -> None:
        self.report.add(discrepancy)
        self._buffer.append(discrepancy)

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
        await self.flush()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            await asyncio.to_thread(self._append, batch)
        except OSError as exc:
            self.dropped += len(batch)
            log.warning("cannot write %d discrepancies to %s: %s", len(batch), self.path, exc)

    def _append(self, batch: list[Discrepancy]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write("".join(d.to_json() + "\n" for d in batch))
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        if size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{LOG_NAME}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{LOG_NAME}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{LOG_NAME}.1"))
        self.path.with_name(f"{LOG_NAME}.{self.keep + 1}").unlink(missing_ok=True)


def read_log(folder: Path, since: float = 0.0) -> Iterator[Discrepancy]:
    """The logged discrepancies from `since` on, oldest first, across rotated files."""
    paths = sorted(folder.glob(LOG_NAME + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    for path in [*paths, folder / LOG_NAME]:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                discrepancy = Discrepancy.from_json(line)
            except (ValueError, TypeError):
                continue  # a line torn by a crash mid-append
            if discrepancy.time >= since:
                yield discrepancy


def report_from_log(folder: Path, since: float = 0.0) -> Report:
    report = Report()
    for discrepancy in read_log(folder, since):
        report.add(discrepancy)
    return report

