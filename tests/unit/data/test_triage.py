"""Triage records: the routing decision, the trace id and the key's recent writes with each discrepancy,
and `turnout discrepancies show KEY` reading them from every worker's log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.trace import NonRecordingSpan, SpanContext

from proxy.admin.http import HttpSide
from proxy.admin.state import AdminState
from proxy.backends.memory import MemoryBackend
from proxy.cli import main
from proxy.data.discrepancies import Discrepancy, DiscrepancyLog, records_of
from proxy.data.dispatcher import Call, Dispatcher
from proxy.data.keylocks import KeyLocks
from proxy.data.triage import RecentWrites
from proxy.replication.local import ReplicationQueue
from proxy.replication.queue import Intent
from proxy.routing.flags import Flags
from proxy.routing.router import Route, Router, bucket
from proxy.routing.watcher import FlagWatcher
from proxy.statedir import DISCREPANCY_LOG_FILE, worker_dir
from proxy.telemetry.tracing import Telemetry
from tests.support.faults import SwitchableBackend
from tests.support.proxy_process import write_config


class Routes:
    def __init__(self, router: Router) -> None:
        self.router = router


def build(tmp_path: Path, flags: Flags, values: bool = False
          ) -> tuple[Dispatcher, MemoryBackend, SwitchableBackend]:
    old, new = MemoryBackend(), SwitchableBackend(MemoryBackend())
    locks = KeyLocks()
    queue = ReplicationQueue(MemoryBackend(), {"old": old, "new": new}, locks)
    log = DiscrepancyLog(tmp_path, record_values=values)
    return Dispatcher({Route.OLD: old, Route.NEW: new}, Routes(Router(flags)), queue, locks, log), old, new


def test_the_ring_keeps_the_last_writes_of_the_last_keys_written() -> None:
    """Bounded two ways: PER_KEY writes a key, MAX_KEYS keys, the least recently written key going first."""
    clock = iter(range(100)).__next__
    ring = RecentWrites(max_keys=2, per_key=3, clock=lambda: float(clock()))
    for _ in range(5):
        ring.note("a", "set", "old", "new")
    ring.note("b", "delete", "old", "new")
    ring.note("a", "set", "old", "new")  # a is now the most recently written
    ring.note("c", "set", "new", "old")  # b goes
    assert len(ring) == 2
    assert [w["time"] for w in ring.of("a", None)] == [3.0, 4.0, 6.0]
    assert ring.of("b", None) == ()
    assert ring.of("c", None) == ({"time": 7.0, "op": "set", "source": "new", "target": "old", "state": "settled"},)
    with pytest.raises(ValueError, match="at least one write"):
        RecentWrites(per_key=0)


def test_writes_since_the_pending_copy_began_are_pending() -> None:
    """A key's pending copy covers every write since it became pending; the writes before it had settled."""
    ring = RecentWrites(clock=iter([1.0, 2.0, 3.0]).__next__)
    for _ in range(3):
        ring.note("k", "set", "old", "new")
    states = [w["state"] for w in ring.of("k", Intent("k", "old", "new", since=2.0))]
    assert states == ["settled", "pending", "pending"]
    assert {w["state"] for w in ring.of("k", None)} == {"settled"}


async def test_a_discrepancy_carries_its_decision_trace_and_the_keys_writes(tmp_path: Path) -> None:
    """The record says primary, shadow, reason, bucket, revision, the caller's trace id, and the writes seen,
    each pending or settled as the queue has it."""
    flags = Flags(revision="r-7", use_new_storage=True, shadow_mode_enabled=True, read_percentage=50,
                  write_percentage=50)
    dispatcher, _, new = build(tmp_path, flags)
    key = next(k for k in (f"user:{n}" for n in range(100)) if bucket(k, "") >= 5000)  # reads and writes on old
    # The caller's trace, unsampled: its id is on the record all the same.
    caller = SpanContext(trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331, is_remote=True)
    call = Call(span=NonRecordingSpan(caller))
    await dispatcher.set(key, b'{"a": 1}', call)
    new.down = True
    await dispatcher.set(key, b'{"a": 2}', call)  # the shadow write fails: left to the queue, pending
    new.down = False
    await dispatcher.close()
    failed = dispatcher.discrepancies.report.latest[-1]
    assert (failed.op, failed.kind) == ("set", "shadow_error")
    assert [w["state"] for w in failed.writes] == ["settled", "pending"]
    dispatcher.queue.start()
    assert await dispatcher.queue.drain(5)  # the replayer copies it
    await dispatcher.queue.stop()
    await new.set(key, b'{"a": 3}')  # behind the proxy's back
    assert await dispatcher.get(key, call) == b'{"a": 2}'
    await dispatcher.close()
    record = dispatcher.discrepancies.report.latest[-1]
    assert (record.op, record.kind, record.route, record.secondary) == ("get", "value_mismatch", "old", "new")
    assert (record.reason, record.bucket, record.revision) == ("default", bucket(key, ""), "r-7")  # not in the 50 %
    assert record.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert [(w["op"], w["source"], w["target"], w["state"]) for w in record.writes] == [
        ("set", "old", "new", "settled"), ("set", "old", "new", "settled")]
    assert (record.primary, record.shadow, record.values) == (None, None, False)  # values not recorded
    assert record.primary_digest
    assert record.shadow_digest
    assert record.paths == ("$.a",)


async def test_values_are_in_the_record_only_when_asked(tmp_path: Path) -> None:
    """With record_values, triage shows both documents; an untraced call has no trace id."""
    dispatcher, old, new = build(tmp_path, Flags(use_new_storage=True, shadow_mode_enabled=True), values=True)
    await old.set("k", b'{"a": 1}')
    await new.set("k", b'{"a": 2}')
    await dispatcher.get("k", Call())
    await dispatcher.close()
    record = dispatcher.discrepancies.report.latest[-1]
    assert (record.primary, record.shadow, record.trace_id, record.writes) == ('{"a": 1}', '{"a": 2}', None, ())


def logged(key: str, time: float, **fields: Any) -> str:
    return Discrepancy(time=time, op="get", key=key, kind="value_mismatch", primary=None, shadow=None,
                       route="old", revision="r", **fields).to_json()


def test_a_keys_records_come_from_every_workers_log_in_time_order(tmp_path: Path) -> None:
    """Worker 0's log and worker 1's, the key's records alone, oldest first, writes read back as recorded."""
    writes = ({"time": 1.0, "op": "set", "source": "old", "target": "new", "state": "settled"},)
    for index, lines in ((0, [logged("k", 3.0), logged("other", 4.0)]), (1, [logged("k", 2.0, writes=writes)])):
        folder = worker_dir(tmp_path, index)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / DISCREPANCY_LOG_FILE).write_text("\n".join(lines) + "\n")
    records = records_of(tmp_path, "k")
    assert [r.time for r in records] == [2.0, 3.0]
    assert records[0].writes == writes
    assert records_of(tmp_path, "k", since=2.5)[0].time == 3.0


def test_the_show_command_prints_a_keys_triage_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout discrepancies show KEY --json` and its text: decision, trace, sides, recent writes."""
    config = write_config(tmp_path, old={"type": "memory"}, new={"type": "memory"})
    state = tmp_path / "state"
    state.mkdir()
    writes = ({"time": 1.0, "op": "delete", "source": "old", "target": "new", "state": "pending"},)
    (state / DISCREPANCY_LOG_FILE).write_text(logged("user:1", 5.0, secondary="new", reason="default", bucket=42,
                                                     trace_id="ab" * 16, writes=writes, values=False,
                                                     paths=("$.a",)) + "\n" + logged("user:2", 6.0) + "\n")
    assert main(["discrepancies", "show", "user:1", "--json", "--config", str(config)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["key"], doc["count"]) == ("user:1", 1)
    record = doc["records"][0]
    assert (record["secondary"], record["reason"], record["bucket"], record["trace_id"]) == (
        "new", "default", 42, "ab" * 16)
    assert record["writes"] == list(writes)
    assert main(["discrepancies", "--json", "show", "user:1", "--config", str(config)]) == 0  # --json before
    assert json.loads(capsys.readouterr().out)["count"] == 1
    assert main(["discrepancies", "show", "user:1", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "route: primary old, shadow new, reason default, bucket 42, flags r" in text
    assert f"trace: {'ab' * 16}" in text
    assert "differ at: $.a" in text
    assert "delete old->new pending" in text
    assert main(["discrepancies", "show", "nobody", "--json", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 0


async def test_the_page_gives_a_keys_triage_records_as_the_command_does(tmp_path: Path) -> None:
    """/discrepancies.json?key=K answers K's records from state_dir's logs, the same document `show --json` prints."""
    (tmp_path / "flags.yaml").write_text("{}\n")
    watcher = FlagWatcher(tmp_path / "flags.yaml", tmp_path)
    watcher.load_initial()
    (tmp_path / DISCREPANCY_LOG_FILE).write_text(logged("a/b c", 5.0, reason="user") + "\n" + logged("x", 6.0) + "\n")
    http = HttpSide(AdminState(watcher=watcher, plane=None, started=time.time(), state_dir=tmp_path,
                               telemetry=Telemetry(enabled=False)))
    port = await http.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/discrepancies.json", params={"key": "a/b c"}) as reply:
            assert reply.status == 200
            doc = await reply.json()
    finally:
        await http.stop()
    assert (doc["key"], doc["count"], doc["records"][0]["reason"]) == ("a/b c", 1, "user")
