"""The migration plan end to end on a running proxy, while a writer hammers it: a legacy file built
from a real public data set (ISO 3166-2 subdivisions, from the pycountry package, LGPL-2.1) is
migrated, verified clean, cut over and rolled back, with no write lost and no deleted key returning."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path

import grpc
import pytest
from turnout import AsyncClient
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy.config import load_config
from proxy.control.adminclient import admin_target
from tests.support.proxy_process import ProxyProcess, run_cli, write_config
from tests.support.stores import legacy_contents, seed_sqlite, sqlite_contents
from tests.support.writers import Writer, assert_every_acknowledged_write_held, subdivisions, turnout, writing


@pytest.mark.slow
async def test_migrate_verify_cutover_rollback_under_writes(tmp_path: Path) -> None:
    """Every step succeeds while writes flow, and both stores end holding exactly the acknowledged writes."""
    legacy = subdivisions()
    assert len(legacy) > 5000
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    (tmp_path / "flags.yaml").write_text("revision: migrating\nuse_new_storage: true\n")
    keys = sorted(legacy)
    writers = [Writer(keys[n::3]) for n in range(3)]
    with ProxyProcess(config, env={"PYTHONPATH": os.pathsep.join(sys.path)}) as proxy:
        async with writing(proxy.target, writers):
            migrated = await turnout(config, "migrate", "--live", "--batch-size", "250")
            assert migrated["mode"] == "live"
            assert migrated["error_count"] == 0
            assert migrated["migrated"] + migrated["skipped"] == migrated["total"] >= len(legacy)
            verified = await turnout(config, "verify", "--live")
            assert verified["clean"], verified
            cutover = await turnout(config, "cutover", "--monitor", "2")
            assert cutover["ok"], cutover
            assert not cutover["rolled_back"]
            assert [s["name"] for s in cutover["steps"]][3:9] == [
                "pause writes", "drain replication", "final sync", "verify", "switch to new", "resume writes"]
            assert cutover["write_pause_s"] < 30
            status = await turnout(config, "status")
            assert (status["override"]["route"], status["override"]["reason"]) == ("new", "cutover")
            await asyncio.sleep(0.5)  # writes flow to new as primary for a while
            rollback = await turnout(config, "rollback", "--reason", "drill")
            assert rollback["ok"], rollback
        drained = await turnout(config, "verify", "--live")
        assert drained["clean"], drained
    old, new = legacy_contents(tmp_path / "legacy.json"), sqlite_contents(tmp_path / "new.sqlite")
    assert old == new
    assert_every_acknowledged_write_held(legacy, writers, old, at_least=100)


async def test_cutover_rolls_back_by_itself_when_verify_fails(tmp_path: Path) -> None:
    """A key only new holds makes the cutover's verify fail: everything goes back to old, writes resume."""
    (tmp_path / "legacy.json").write_text(json.dumps({f"k{i}": i for i in range(100)}))
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    (tmp_path / "flags.yaml").write_text("use_new_storage: true\n")
    with ProxyProcess(config) as proxy:
        dry = await turnout(config, "cutover", "--dry-run", expect=1)  # no verify on record yet: a gate fails
        assert not dry["ok"]
        assert dry["steps"][-1]["name"] == "gate: last verify clean"
        gated = await turnout(config, "cutover", expect=1)  # a failed gate changes nothing: no override
        assert not gated["rolled_back"]
        assert gated["write_pause_s"] is None
        assert not (await turnout(config, "status"))["override"]["active"]
        await turnout(config, "migrate")
        assert (await turnout(config, "verify"))["clean"]
        assert (await turnout(config, "cutover", "--dry-run"))["ok"]
        connection = sqlite3.connect(tmp_path / "new.sqlite")  # a write that bypassed the proxy
        with connection:
            connection.execute("INSERT INTO kv (key, value) VALUES ('stray', '1')")
        connection.close()
        report = await turnout(config, "cutover", "--monitor", "1", expect=1)
        assert report["rolled_back"]
        failed = [s for s in report["steps"] if not s["ok"]]
        assert failed[0]["name"] == "verify"
        assert "1 extra" in failed[0]["detail"]
        assert report["write_pause_s"] is not None
        assert report["steps"][-1]["detail"] == "writes resumed; routing was never changed"
        status = await turnout(config, "status")
        assert not status["override"]["active"]  # routing was never switched: the flags still decide
        assert not status["writes"]["paused"]
        async with AsyncClient(proxy.target) as client:
            await client.set("after", 1)  # writes flow again
        assert list((tmp_path / "state" / "incidents").glob("*-cutover.json"))


async def test_rollback_after_a_partial_migration_keeps_every_legacy_key(tmp_path: Path) -> None:
    """Rollback syncs back what new holds and never deletes what only old holds (keys a partial
    migration has not copied yet); it exits 0 because old holds everything new holds."""
    legacy = {f"k{i:03}": {"i": i} for i in range(300)}
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    (tmp_path / "flags.yaml").write_text("use_new_storage: true\n")
    with ProxyProcess(config) as proxy:
        await turnout(config, "migrate", "--live")
        connection = sqlite3.connect(tmp_path / "new.sqlite")  # as if the migration had stopped half way
        with connection:
            connection.execute("DELETE FROM kv WHERE key >= 'k150'")
            connection.execute("UPDATE kv SET value = '{\"i\": \"newer\"}' WHERE key = 'k001'")
        connection.close()
        report = await turnout(config, "rollback", "--reason", "partial")
        assert report["ok"], report
        assert "150 only in old (left as they are)" in report["steps"][-1]["detail"]
        async with AsyncClient(proxy.target) as client:
            assert await client.get("k200") == {"i": 200}
    assert legacy_contents(tmp_path / "legacy.json") == {**legacy, "k001": {"i": "newer"}}


async def test_a_bad_transform_is_refused_by_the_admin_api_as_an_invalid_argument(tmp_path: Path) -> None:
    """Over the real admin API: INVALID_ARGUMENT with the loader's message (not UNKNOWN), nothing copied,
    and `turnout migrate --live` reports it like the offline run does (exit 2)."""
    (tmp_path / "legacy.json").write_text(json.dumps({"a": 1}))
    (tmp_path / "hastransform_5c.py").write_text("def up(key, doc):\n    return doc\n")
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    with ProxyProcess(config, env={"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}):
        async with grpc.aio.insecure_channel(admin_target(load_config(config))) as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            for spec, message in (("no_such_module_5c:up", "cannot import no_such_module_5c"),
                                  ("nocolon", "expected module:function"),
                                  ("hastransform_5c:down", "has no function down")):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    async for _ in stub.Migrate(admin_pb2.MigrateRequest(transform=spec)):
                        pass
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
                assert message in (refused.value.details() or "")
        done = await asyncio.to_thread(run_cli, config, "migrate", "--live", "--transform", "no_such_module_5c:up",
                                       timeout=60)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "cannot import no_such_module_5c" in done.stderr
        assert "Traceback" not in done.stderr
        assert (await turnout(config, "status", "--records"))["shadow"]["records"]["new"]["records"] == 0


async def test_a_verify_through_the_admin_api_satisfies_the_cutover_gate(tmp_path: Path) -> None:
    """The verify record is written by the proxy's own Verify, not only by the command line."""
    (tmp_path / "legacy.json").write_text(json.dumps({"user:1": {"name": "Ada"}}))
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    with ProxyProcess(config):
        before = await turnout(config, "cutover", "--dry-run", "--json", expect=1)
        assert any(s["name"] == "gate: last verify clean" and not s["ok"] for s in before["steps"])
        await turnout(config, "migrate", "--json")
        async with grpc.aio.insecure_channel(admin_target(load_config(config))) as channel:
            updates = [u async for u in admin_pb2_grpc.AdminStub(channel).Verify(admin_pb2.VerifyRequest())]
        assert json.loads(updates[-1].result_json)["clean"]
        after = await turnout(config, "cutover", "--dry-run", "--json")
        assert [s["ok"] for s in after["steps"] if s["name"] == "gate: last verify clean"] == [True]


@pytest.mark.slow
async def test_a_live_migrate_under_two_workers_keeps_every_write_of_either(tmp_path: Path) -> None:
    """`turnout serve --workers 2`, writes split between the stores (each copied by the shared queue),
    three writers spread over both workers: the pages' turns hold across the workers, and afterwards
    both stores hold exactly the acknowledged writes, none lost and no deleted key back."""
    legacy = {f"item:{i:05}": {"i": i} for i in range(4000)}
    await asyncio.to_thread(seed_sqlite, tmp_path / "old.sqlite", legacy)
    config = write_config(tmp_path, old={"type": "sqlite", "path": "old.sqlite"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    (tmp_path / "flags.yaml").write_text("use_new_storage: true\ntraffic_percentage: {read: 50, write: 50}\n")
    keys = sorted(legacy)
    writers = [Writer(keys[n::3]) for n in range(3)]
    with ProxyProcess(config, args=["--workers", "2"]) as proxy:
        async with writing(proxy.target, writers):
            migrated = await turnout(config, "migrate", "--live", "--batch-size", "200")
            assert migrated["mode"] == "live"
            assert migrated["error_count"] == 0
            # Keys deleted before the scan reached them are not read: fewer than the legacy count.
            assert migrated["migrated"] + migrated["skipped"] == migrated["total"] > len(legacy) // 2
        verified = await turnout(config, "verify", "--live")
        assert verified["clean"], verified
    old, new = sqlite_contents(tmp_path / "old.sqlite"), sqlite_contents(tmp_path / "new.sqlite")
    assert_every_acknowledged_write_held(legacy, writers, old, new, at_least=100)
