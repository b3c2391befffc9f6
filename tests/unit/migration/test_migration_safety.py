"""The migration tools' safety rules, offline: a run with errors is not complete, batches overlap
within their bound, a killed migrate resumes, a transform is found in the current folder, and a
sync back (rollback) never deletes what only old holds."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from proxy import statedir
from proxy.backends.base import Backend, Item
from proxy.cli import main
from proxy.control.cutover import cutover
from proxy.errors import InvalidArgument
from proxy.migration.migrate import load_transform, migrate
from proxy.migration.stores import Stores
from proxy.migration.verify import verify
from proxy.routing.router import Route
from proxy.statedir import CHECKPOINT_FILE
from tests.support.fake_admin import FakeAdmin, clean_result
from tests.support.faults import SwitchableBackend
from tests.support.paths import ROOT
from tests.support.proxy_process import write_config
from tests.support.stores import backend_contents, legacy_contents, seed_sqlite, sqlite_contents


async def test_a_run_that_left_errors_is_not_complete_and_the_next_retries_them(stores: Stores,
                                                                               tmp_path: Path) -> None:
    """Keys that failed are copied by the next run instead of it returning 'already complete'."""

    def failing(key: str, doc: Any) -> Any:
        if key in ("user:007", "user:250"):
            raise ValueError("bad record")
        return doc

    first = await migrate(stores, tmp_path, batch_size=50, transform=failing)
    assert (first.migrated, first.error_count) == (298, 2)
    assert statedir.read_json(tmp_path / CHECKPOINT_FILE)["complete"] is False  # type: ignore[index]
    second = await migrate(stores, tmp_path, batch_size=50)
    assert not second.already_complete
    assert (second.migrated, second.skipped, second.error_count) == (2, 298, 0)
    assert await backend_contents(stores.new) == await backend_contents(stores.old)
    assert (await migrate(stores, tmp_path)).already_complete


class SlowWrites(SwitchableBackend):
    """Counts how many set_many calls overlap."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.active = 0
        self.peak = 0

    async def set_many(self, items: Sequence[Item]) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(0.02)
            await super().set_many(items)
        finally:
            self.active -= 1


async def test_offline_batches_overlap_up_to_the_concurrency_bound(stores: Stores, tmp_path: Path) -> None:
    """With --concurrency 4, up to four batches are written at once, never more; all land."""
    new = SlowWrites(stores.new)
    bounded = Stores(stores.old, new, stores.router)
    result = await migrate(bounded, tmp_path, batch_size=20, concurrency=4)
    assert (result.total, result.migrated, result.error_count) == (300, 300, 0)
    assert 1 < new.peak <= 4  # overlapping, within the bound
    assert await backend_contents(stores.new) == await backend_contents(stores.old)


async def test_a_failed_batch_leaves_the_checkpoint_before_it(stores: Stores, tmp_path: Path) -> None:
    """When the target dies mid-run, the checkpoint names only keys whose batches all finished."""
    new = SwitchableBackend(stores.new)
    calls = 0
    inner_get = stores.new.get

    async def get(key: str) -> bytes | None:
        nonlocal calls
        calls += 1
        if calls > 120:
            new.down = True
        return await inner_get(key)

    new.inner.get = get  # type: ignore[method-assign]
    with pytest.raises(Exception, match="down"):
        # The read-back's reads meet the target down, which ends the run (a failed write is an error
        # of its batch's keys instead, and the run goes on).
        await migrate(Stores(stores.old, new, stores.router), tmp_path, batch_size=20, concurrency=3, read_back=True)
    checkpoint = statedir.read_json(tmp_path / CHECKPOINT_FILE)
    assert checkpoint is not None
    assert checkpoint["complete"] is False
    copied = await backend_contents(stores.new)
    last = checkpoint["last_key"]
    assert last is None or all(f"user:{i:03}" in copied for i in range(int(last.split(":")[1]) + 1))
    new.down = False
    resumed = await migrate(Stores(stores.old, stores.new, stores.router), tmp_path, batch_size=20)
    assert resumed.error_count == 0
    assert await backend_contents(stores.new) == await backend_contents(stores.old)


def test_a_transform_is_found_in_the_current_folder_and_bad_ones_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed `turnout` script does not put the current folder on sys.path: the loader does."""
    (tmp_path / "mytransform_5a.py").write_text("def up(key, doc):\n    return {**doc, 'v': 2}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert load_transform("mytransform_5a:up")("k", {"a": 1}) == {"a": 1, "v": 2}
    for spec, message in (("nocolon", "module:function"), ("no_such_module_5a:up", "cannot import"),
                          ("mytransform_5a:down", "no function")):
        with pytest.raises(InvalidArgument, match=message):
            load_transform(spec)


def test_the_cli_reports_a_bad_transform_without_a_traceback(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "legacy.json").write_text('{"a": 1}')
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    code = main(["migrate", "--offline", "--config", str(config), "--transform", "no_such_module_5a:up"])
    assert code == 2
    assert "cannot import no_such_module_5a" in capsys.readouterr().err


def test_a_killed_migrate_resumes_and_a_finished_one_reruns_as_a_no_op(tmp_path: Path) -> None:
    """SIGKILL mid-run (a real `turnout migrate`), then: the next run resumes after the checkpoint,
    verify is clean, and a third run does nothing."""
    legacy = {f"item:{i:05}": {"i": i, "name": f"n{i}"} for i in range(3000)}
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    command = [sys.executable, "-m", "proxy.cli", "migrate", "--offline", "--json", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([*command, "--rate", "1000", "--batch-size", "50"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint_path = tmp_path / "state" / CHECKPOINT_FILE
    deadline = time.monotonic() + 30
    try:
        while True:
            checkpoint = statedir.read_json(checkpoint_path) if checkpoint_path.exists() else None
            if checkpoint and checkpoint.get("last_key") and checkpoint["last_key"] >= "item:00500":
                break
            assert process.poll() is None, "migrate ended before it could be killed"
            assert time.monotonic() < deadline, "migrate made no progress"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    interrupted = statedir.read_json(checkpoint_path)
    assert interrupted is not None
    assert not interrupted["complete"]
    copied = sqlite_contents(tmp_path / "new.sqlite")
    assert 500 <= len(copied) < 3000

    def run() -> dict[str, Any]:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    resumed = run()
    assert resumed["resumed_after"] == interrupted["last_key"]
    assert resumed["total"] == 3000 - (int(interrupted["last_key"].split(":")[1]) + 1)
    assert resumed["error_count"] == 0
    assert resumed["errors"] == []
    assert {"total", "migrated", "skipped", "errors", "duration_s", "rate_per_s"} <= set(resumed)
    assert sqlite_contents(tmp_path / "new.sqlite") == legacy
    again = run()
    assert again["already_complete"]
    assert again["migrated"] == again["total"] == 0
    verified = subprocess.run([sys.executable, "-m", "proxy.cli", "verify", "--offline", "--config", str(config)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_sync_back_from_new_never_deletes_what_only_old_holds(stores: Stores, tmp_path: Path) -> None:
    """`verify --repair --truth new` (rollback's sync back) copies new's documents into old and
    leaves keys that only old holds, e.g. after a partial migration."""
    await stores.new.set_many([(f"user:{i:03}", json.dumps({"n": i}).encode()) for i in range(100)])
    await stores.new.set("user:005", b'{"n": "changed in new"}')
    await stores.new.set("made:in-new", b"1")
    result = await verify(stores, fix=True, truth=Route.NEW)
    old = await backend_contents(stores.old)
    assert len(old) == 301
    assert old["user:005"] == {"n": "changed in new"}
    assert old["made:in-new"] == 1
    assert (result.repaired, result.missing, result.different, result.extra) == (2, 200, 0, 0)


def test_offline_rollback_keeps_old_only_keys_and_succeeds(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout rollback` with no proxy: old gains what new holds, loses nothing, exit 0."""
    legacy = {f"k{i:03}": i for i in range(200)}
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    seed_sqlite(tmp_path / "new.sqlite", {**{f"k{i:03}": i for i in range(50)}, "k001": "newer", "fresh": 1})
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    assert main(["rollback", "--config", str(config), "--reason", "drill", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"]
    assert legacy_contents(tmp_path / "legacy.json") == {**legacy, "k001": "newer", "fresh": 1}
    assert list((tmp_path / "state" / "incidents").glob("*-rollback.json"))


@pytest.mark.parametrize("fail_in", ["final sync", "verify"])
def test_an_interrupted_cutover_resumes_writes_and_leaves_routing_alone(tmp_path: Path, fail_in: str) -> None:
    """Ctrl-C (or SIGTERM) while writes are paused: writes resume; traffic was never switched."""
    statedir.record_verify(tmp_path, {"clean": True})
    admin = FakeAdmin()

    def follow(job: Any, label: str) -> dict[str, Any]:
        if job == fail_in:
            raise KeyboardInterrupt
        return clean_result()

    report = cutover(admin, tmp_path, follow, 0)  # type: ignore[arg-type]
    assert not report.ok
    assert report.rolled_back
    assert admin.calls == ["pause", "resume"]
    assert report.write_pause_s is not None
    assert [s.name for s in report.steps if not s.ok] == [fail_in]
    assert [(r.automatic, r.ok) for r in admin.rollbacks] == [(True, True)]  # the proxy records it


def test_a_cutover_stopped_by_a_gate_changes_nothing(tmp_path: Path) -> None:
    admin = FakeAdmin()  # no verify on record: the last gate fails
    report = cutover(admin, tmp_path, lambda job, label: {}, 0)  # type: ignore[arg-type]
    assert not report.ok
    assert not report.rolled_back
    assert admin.calls == []
