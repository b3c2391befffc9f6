"""The discrepancy log: durable, bounded and rotated JSONL in state_dir, and the report read back from it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import main
from proxy.commands.discrepancies import parse_since
from proxy.data import discrepancies, valuediff
from proxy.data.discrepancies import Discrepancy, DiscrepancyLog, read_log, report_from_log, trim
from proxy.statedir import DISCREPANCY_LOG_FILE
from tests.support.proxy_process import write_config


def found(time: float, key: str, kind: str = "value_mismatch", op: str = "get") -> Discrepancy:
    return Discrepancy(time, op, key, kind, '"p"', '"s"', "old", "rev-1")


async def run_proxy_once(folder: Path, compared: int, found_keys: list[str], time: float = 100.0) -> None:
    """One proxy run's worth of shadow work: `compared` operations, a discrepancy for each key given."""
    log = DiscrepancyLog(folder)
    for i in range(compared):
        log.compared("get")
        if i < len(found_keys):
            log.record(found(time + i, found_keys[i]))
    await log.stop()


async def test_the_rate_covers_the_same_operations_across_restarts(tmp_path: Path) -> None:
    """After a restart the log still knows how many operations the earlier run compared, so the rate stays right."""
    await run_proxy_once(tmp_path, compared=10, found_keys=["a", "b", "c", "d"])
    await run_proxy_once(tmp_path, compared=10, found_keys=[], time=200.0)
    report = report_from_log(tmp_path)
    assert (report.total, sum(report.compared.values())) == (4, 20)
    assert report.to_document()["rate"] == pytest.approx(0.2)


async def test_since_counts_discrepancies_and_compared_operations_of_the_same_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--since T keeps both the discrepancies and the compared counts written from T on."""
    now = [100.0]
    monkeypatch.setattr("proxy.data.discrepancies.time.time", lambda: now[0])
    await run_proxy_once(tmp_path, compared=8, found_keys=["a", "b"], time=100.0)  # counts line at 100
    now[0] = 200.0
    await run_proxy_once(tmp_path, compared=5, found_keys=["c"], time=200.0)  # counts line at 200
    report = report_from_log(tmp_path, since=150.0)
    assert (report.total, dict(report.compared)) == (1, {"get": 5})
    assert [d.key for d in report.first] == ["c"]
    assert report.rate == pytest.approx(0.2)


async def test_compared_counts_alone_reach_the_log_within_a_second(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With no discrepancy to write, the periodic flush still writes the compared counts, at most once a second."""
    log = DiscrepancyLog(tmp_path)
    log.compared("has")
    await log.flush(final=False)  # the first counts line is due at once
    log.compared("has")
    await log.flush(final=False)  # too soon for another
    assert dict(report_from_log(tmp_path).compared) == {"has": 1}
    monkeypatch.setattr(discrepancies, "COMPARED_INTERVAL_S", 0.0)
    await log.flush(final=False)
    assert dict(report_from_log(tmp_path).compared) == {"has": 2}
    assert list(read_log(tmp_path)) == []  # counts lines are not discrepancies


async def test_the_log_rotates_and_stays_bounded(tmp_path: Path) -> None:
    """Past max_bytes the log rotates; only `keep` old files stay, and reading goes oldest to newest."""
    log = DiscrepancyLog(tmp_path, max_bytes=2000, keep=2)
    for i in range(200):
        log.record(found(float(i), f"key-{i:04d}"))
        if i % 10 == 9:
            await log.flush()
    await log.stop()
    names = {p.name for p in tmp_path.iterdir()}
    assert {f"{DISCREPANCY_LOG_FILE}.1", f"{DISCREPANCY_LOG_FILE}.2"} <= names <= {DISCREPANCY_LOG_FILE, f"{DISCREPANCY_LOG_FILE}.1", f"{DISCREPANCY_LOG_FILE}.2"}
    assert all(p.stat().st_size < 2000 + 10 * 200 for p in tmp_path.iterdir())
    keys = [d.key for d in read_log(tmp_path)]
    assert keys == sorted(keys)
    assert keys[-1] == "key-0199"
    assert len(keys) < 200  # the oldest are gone


async def test_a_stalled_disk_drops_and_counts_rather_than_growing_without_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond MAX_BUFFERED unwritten discrepancies, more are counted as dropped; the report still counts them."""
    monkeypatch.setattr(discrepancies, "MAX_BUFFERED", 3)
    log = DiscrepancyLog(tmp_path)
    for i in range(5):
        log.record(found(float(i), f"k{i}"))
    assert log.dropped == 2
    assert log.report.total == 5
    await log.stop()
    assert [d.key for d in read_log(tmp_path)] == ["k0", "k1", "k2"]


def test_torn_and_foreign_lines_are_skipped(tmp_path: Path) -> None:
    """A line cut short by a crash, or not a record at all, does not stop the report."""
    good = found(1.0, "k").to_json()
    (tmp_path / DISCREPANCY_LOG_FILE).write_text(f'{good}\n{{"time": 2, "op": "ge\n[1, 2]\n{{"time": 3, "compared": {{"get": 4}}}}\n')
    report = report_from_log(tmp_path)
    assert (report.total, dict(report.compared)) == (1, {"get": 4})


def test_report_keeps_the_first_and_the_latest_samples_with_both_answers_trimmed() -> None:
    """Samples are bounded, each with key, both answers (trimmed), time and flags revision."""
    report = discrepancies.Report()
    for i in range(20):
        report.add(Discrepancy(float(i), "get", f"k{i}", "value_mismatch", trim("x" * 1000), trim("y"), "new", "r"))
    doc = report.to_document()
    assert [d["key"] for d in doc["first"]] == [f"k{i}" for i in range(discrepancies.SAMPLES)]
    assert doc["latest"][-1]["key"] == "k19"
    assert len(doc["latest"]) == discrepancies.SAMPLES
    sample = doc["first"][0]
    assert set(sample) >= {"key", "primary", "shadow", "time", "revision"}
    assert len(sample["primary"]) < 300
    assert sample["primary"].endswith("(1000 chars)")
    assert sample["shadow"] == "y"


def test_rate_is_unknown_not_zero_without_compared_counts(tmp_path: Path) -> None:
    """A log with discrepancies but no compared counts (an older proxy wrote it) gives rate null."""
    (tmp_path / DISCREPANCY_LOG_FILE).write_text(found(1.0, "k").to_json() + "\n")
    assert report_from_log(tmp_path).to_document()["rate"] is None
    assert report_from_log(tmp_path / "empty").to_document()["rate"] == 0.0


@pytest.mark.parametrize(("text", "expected"), [
    ("15m", 10_000.0 - 900), ("2h", 10_000.0 - 7200), ("1.5s", 10_000.0 - 1.5), ("1732400000", 1732400000.0),
    ("2024-11-23T22:13:20Z", 1732400000.0), ("2024-11-23T23:13:20+01:00", 1732400000.0),
])
def test_since_takes_relative_unix_and_iso_times(text: str, expected: float) -> None:
    """--since accepts 15m / 2h, unix seconds and ISO 8601."""
    assert parse_since(text, now=10_000.0) == pytest.approx(expected)


def test_since_refuses_what_is_not_a_time() -> None:
    """A --since that is no time says how to write one."""
    with pytest.raises(Exception, match="not a time"):
        parse_since("yesterday")


def test_the_command_reports_from_the_log_with_the_proxy_stopped(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout discrepancies --json --since` reads state_dir alone: totals, kinds, ops and the rate."""
    config = write_config(tmp_path, old={"type": "memory"}, new={"type": "memory"})
    state = tmp_path / "state"
    state.mkdir()
    lines = [found(50.0, "old-one").to_json(), json.dumps({"time": 50.0, "compared": {"get": 100}}),
             found(150.0, "a").to_json(), found(160.0, "b", "missing_in_shadow", "has").to_json(),
             json.dumps({"time": 160.0, "compared": {"get": 6, "has": 2}})]
    (state / DISCREPANCY_LOG_FILE).write_text("\n".join(lines) + "\n")
    assert main(["discrepancies", "--json", "--since", "100", "--config", str(config)]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert (doc["total"], doc["compared"], doc["rate"]) == (2, 8, 0.25)
    assert doc["by_kind"] == {"value_mismatch": 1, "missing_in_shadow": 1}
    assert doc["by_op"] == {"get": 1, "has": 1}
    assert [d["key"] for d in doc["first"]] == ["a", "b"]
    assert main(["discrepancies", "--config", str(config)]) == 0
    assert "3 discrepancies in 108 compared operations" in capsys.readouterr().out


async def test_the_logs_of_every_worker_are_read_as_one_in_time_order(tmp_path: Path) -> None:
    """`turnout serve --workers N`: each worker logs in its own folder; readers see one log."""
    worker_0, worker_1 = DiscrepancyLog(tmp_path), DiscrepancyLog(tmp_path / "workers" / "1")
    worker_0.record(found(3.0, "c"))
    worker_1.record(found(1.0, "a"))
    worker_1.record(found(2.0, "b"))
    for op in ("get", "get", "set"):
        worker_1.compared(op)
    worker_0.compared("get")
    await worker_0.flush()
    await worker_1.flush()
    assert [d.key for d in read_log(tmp_path)] == ["a", "b", "c"]
    report = report_from_log(tmp_path)
    assert report.total == 3
    assert dict(report.compared) == {"get": 3, "set": 1}


# --- what a record says of two documents without holding them (contract §5) -------------------

def test_a_digest_is_of_the_canonical_document_so_layout_does_not_change_it() -> None:
    """Member order and whitespace give the same 16-hex-digit digest; another document another one."""
    same = valuediff.digest(b'{"a": 1, "b": [1, 2]}')
    assert same == valuediff.digest(b'{"b":[1,2],"a":1}')
    assert len(same) == 16
    assert same != valuediff.digest(b'{"a": 2, "b": [1, 2]}')
    assert len(valuediff.digest(b"not json")) == 16  # the bytes themselves when they do not parse


def test_differing_paths_name_members_items_and_types_in_document_order() -> None:
    """Paths list a changed scalar, a member or item on one side only, and a changed type."""
    found = valuediff.differing_paths(b'{"a": 1, "b": {"c": true, "d": [1, 2, 3]}, "odd key": 1, "t": 1}',
                                      b'{"a": 1.0, "b": {"c": 1, "d": [1, 5]}, "odd key": 2, "t": [1], "n": null}')
    assert found == valuediff.Differences(('$.b.c', '$.b.d[1]', '$.b.d[2]', '$["odd key"]', '$.t', '$.n'))


def test_differing_paths_are_bounded_and_need_no_recursion() -> None:
    """Many differences give at most MAX_PATHS paths, marked truncated; nesting deeper than Python's
    recursion limit is walked or, where the parser gives up, reported as the whole document."""
    many = valuediff.differing_paths(json.dumps(list(range(100))).encode(), json.dumps([-1] * 100).encode())
    assert len(many.paths) == valuediff.MAX_PATHS
    assert many.truncated
    deep = b"[" * 900 + b"1" + b"]" * 900
    deeper = b"[" * 900 + b"2" + b"]" * 900
    assert valuediff.differing_paths(deep, deeper).paths[0].endswith("[0]" * 900)
    assert valuediff.differing_paths(b"[" * 100_000 + b"]" * 100_000, b"[]").paths == ("$",)
    assert len(valuediff.digest(b"[" * 100_000 + b"]" * 100_000)) == 16


def test_a_record_of_two_documents_holds_them_only_when_values_are_recorded() -> None:
    """Off: sizes, digests and paths, no text; on: the text (trimmed) as well."""
    off = discrepancies.document_fields(b'{"pin": "1234"}', b'{"pin": "9999"}', record_values=False)
    assert (off["primary"], off["shadow"], off["values"]) == (None, None, False)
    assert (off["primary_size"], off["shadow_size"], off["paths"]) == (15, 15, ("$.pin",))
    on = discrepancies.document_fields(b'{"pin": "1234"}', None, record_values=True)
    assert (on["primary"], on["shadow"], on["shadow_size"], on["values"]) == ('{"pin": "1234"}', None, None, True)


async def test_the_log_is_private_and_reads_back_records_of_either_shape(tmp_path: Path) -> None:
    """The log file is 0600 in a 0700 folder whatever the umask; a line of an older proxy (values, no
    sizes) and a new one (sizes, paths) both read back."""
    log = DiscrepancyLog(tmp_path / "state")
    new = Discrepancy(2.0, "get", "k", "value_mismatch", route="old", revision="r",
                      **discrepancies.document_fields(b'{"a":1}', b'{"a":2}', record_values=False))
    log.record(found(1.0, "older"))
    log.record(new)
    previous = os.umask(0)
    try:
        await log.stop()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / DISCREPANCY_LOG_FILE).stat().st_mode) == 0o600
    older, again = read_log(tmp_path / "state")
    assert (older.primary, older.values) == ('"p"', True)
    assert again == new
