"""A live backfill under writes, deletes and reads with shadow mode on (reads and writes on the legacy
file, or an old SQLite store under `--workers 2`, the new SQLite store in shadow): the keys the backfill had not reached yet are counted as not
migrated, never as discrepancies, and a real difference planted in the new store afterwards is still
recorded, with its triage record shown by `turnout discrepancies show KEY`."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from turnout import AsyncClient
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from proxy import statedir
from proxy.statedir import CHECKPOINT_FILE
from tests.support.otlp_receiver import GrpcReceiver
from tests.support.proxy_process import ProxyProcess, write_config
from tests.support.stores import seed_sqlite, sqlite_contents
from tests.support.writers import Writer, turnout, writing

KEYS = 3000
#: Keys a second the backfill copies: slow, so that writers and readers meet keys it has not reached.
RATE = 300
#: The trace of the call that reads the planted difference (W3C traceparent).
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class Reader:
    """Reads (Get and Has) keys no writer touches, ahead of the backfill's cursor while there are any."""

    def __init__(self, keys: list[str], state_dir: Path) -> None:
        self.keys = keys
        self.state_dir = state_dir
        self.reads = 0
        self.ahead = 0  # reads of keys past the cursor in force when chosen
        self.stop = asyncio.Event()

    def cursor(self) -> str:
        checkpoint = statedir.read_json(self.state_dir / CHECKPOINT_FILE)
        last = checkpoint.get("last_key") if isinstance(checkpoint, dict) else None
        return last if isinstance(last, str) else ""

    async def run(self, target: str, seed: int) -> None:
        rng = random.Random(seed)
        async with AsyncClient(target, timeout=5) as client:
            while not self.stop.is_set():
                cursor = self.cursor()
                ahead = [key for key in self.keys if key > cursor]
                far = ahead[len(ahead) // 3:]  # well past the cursor: the last two thirds of what is left
                for _ in range(20):
                    key = rng.choice(far or self.keys)
                    self.ahead += key > cursor
                    if rng.random() < 0.5:
                        assert await client.get(key) == {"i": int(key.split(":")[1])}
                    else:
                        assert await client.has(key)
                    self.reads += 1
                await asyncio.sleep(0.005)


async def wait_for_report(config: Path, done: Any, timeout: float = 10.0) -> dict[str, Any]:
    """`turnout discrepancies --json` once `done(report)` holds (the log is appended a few times a second)."""
    deadline = time.monotonic() + timeout
    while True:
        report = await turnout(config, "discrepancies")
        if done(report) or time.monotonic() > deadline:
            return report
        await asyncio.sleep(0.2)


async def started(state: Path, backfill: asyncio.Task[dict[str, Any]], timeout: float = 30.0) -> None:
    """Wait until the migrate wrote its first checkpoint (it does as it starts)."""
    deadline = time.monotonic() + timeout
    while statedir.read_json(state / CHECKPOINT_FILE) is None:
        assert not backfill.done(), backfill.result()
        assert time.monotonic() < deadline, "the migrate wrote no checkpoint"
        await asyncio.sleep(0.05)


async def landed(store: Path, key: str, value: Any, timeout: float = 10.0) -> None:
    """Wait until the new store holds value at key."""
    deadline = time.monotonic() + timeout
    while (await asyncio.to_thread(sqlite_contents, store)).get(key) != value:
        assert time.monotonic() < deadline, f"{key} never reached the new store"
        await asyncio.sleep(0.05)


def plant(store: Path, key: str, value: Any) -> None:
    """Change the new store behind the proxy's back (None: delete the key)."""
    connection = sqlite3.connect(store, timeout=10)
    try:
        with connection:
            if value is None:
                connection.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                connection.execute("UPDATE kv SET value = ? WHERE key = ?", (json.dumps(value).encode(), key))
    finally:
        connection.close()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_live_backfill_reports_no_discrepancy_for_keys_it_had_not_reached(
        tmp_path: Path, workers: int, receiver: GrpcReceiver) -> None:
    """0 discrepancies (and not_migrated > 0, deletes among them) for a backfill under traffic; then a value
    and an absence planted in new for keys it reached are value_mismatch and missing_in_shadow, with triage."""
    legacy = {f"item:{i:05}": {"i": i} for i in range(KEYS)}
    if workers == 1:
        (tmp_path / "legacy.json").write_text(json.dumps(legacy))
        old: dict[str, str] = {"type": "jsonfile", "path": "legacy.json"}
    else:  # a legacy file is one process's alone: several workers share an old store in SQLite
        await asyncio.to_thread(seed_sqlite, tmp_path / "old.sqlite", legacy)
        old = {"type": "sqlite", "path": "old.sqlite"}
    config = write_config(tmp_path, old=old, new={"type": "sqlite", "path": "new.sqlite"})
    (tmp_path / "flags.yaml").write_text("revision: backfill-1\nuse_new_storage: true\nshadow_mode_enabled: true\n")
    state = tmp_path / "state"
    keys = sorted(legacy)
    writers = [Writer(keys[n::4]) for n in range(3)]  # sets and deletes, a fifth of them deletes
    reader = Reader(keys[3::4], state)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    with ProxyProcess(config, env, args=["--workers", str(workers)] if workers > 1 else []) as proxy:
        backfill = asyncio.create_task(
            turnout(config, "migrate", "--live", "--rate", str(RATE), "--batch-size", "100"))
        await started(state, backfill)  # traffic from its start on: before it, no backfill explains a gap
        async with writing(proxy.target, writers):
            readers = [asyncio.create_task(reader.run(proxy.target, 100 + n)) for n in range(2)]
            migrated = await backfill
            reader.stop.set()
            await asyncio.gather(*readers)
        assert migrated["mode"] == "live"
        assert migrated["error_count"] == 0
        assert reader.ahead > 100
        status = await turnout(config, "status")  # every worker's live counts; the traffic has stopped
        assert status["shadow"]["discrepancies"] == 0
        counted = status["shadow"]["not_migrated"]
        # Each worker's log has its counts within a second.
        report = await wait_for_report(config, lambda r: r["not_migrated"] >= counted)
        assert report["not_migrated"] == counted > 0
        assert report["total"] == 0, report["first"]
        assert report["not_migrated_by_op"].get("delete", 0) > 0, report  # the noise of issue 15
        assert report["not_migrated_by_op"].get("get", 0) + report["not_migrated_by_op"].get("has", 0) > 50
        assert report["compared"] > 100  # the writes, and the reads of keys it had reached, were compared

        # The backfill reached every key now: a difference planted in new is a discrepancy again.
        changed, gone, written = keys[3], keys[7], keys[11]
        async with AsyncClient(proxy.target, timeout=5) as client:
            await client.set(written, {"i": 11, "note": "through the proxy"})
            # Acknowledged once the primary holds it: its shadow write may still be on its way to new.
            await landed(tmp_path / "new.sqlite", written, {"i": 11, "note": "through the proxy"})
            plant(tmp_path / "new.sqlite", changed, {"i": -1})
            plant(tmp_path / "new.sqlite", gone, None)
            plant(tmp_path / "new.sqlite", written, {"i": 11, "note": "behind its back"})
            async with grpc.aio.insecure_channel(proxy.target) as channel:  # the caller's trace on the read
                answer = await kv_pb2_grpc.KeyValueStub(channel).Get(
                    kv_pb2.GetRequest(key=changed), metadata=(("traceparent", f"00-{TRACE_ID}-b7ad6b7169203331-01"),))
            assert json.loads(answer.value) == {"i": 3}  # the primary's answer
            assert await client.get(gone) == {"i": 7}
            assert await client.get(written) == {"i": 11, "note": "through the proxy"}
        report = await wait_for_report(config, lambda r: r["total"] >= 3)
        assert report["by_kind"] == {"value_mismatch": 2, "missing_in_shadow": 1}

        shown = await turnout(config, "discrepancies", "show", changed)
        assert shown["count"] == 1
        record = shown["records"][0]
        assert (record["kind"], record["op"], record["route"], record["secondary"]) == (
            "value_mismatch", "get", "old", "new")
        assert (record["reason"], record["revision"], record["values"]) == ("default", "backfill-1", False)
        assert isinstance(record["bucket"], int)
        assert record["paths"] == ["$.i"]
        assert record["primary_digest"] != record["shadow_digest"]
        assert record["writes"] == []  # nobody wrote it through the proxy
        assert record["trace_id"] == TRACE_ID

        written_record = (await turnout(config, "discrepancies", "show", written))["records"][0]
        if workers == 1:  # each worker keeps its own ring: under workers the write may be another's
            assert [(w["op"], w["source"], w["target"], w["state"]) for w in written_record["writes"]] == [
                ("set", "old", "new", "settled")]
