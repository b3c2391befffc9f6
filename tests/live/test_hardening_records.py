"""Hardening of what lands on disk and in reports: archives that never overwrite what they must not,
discrepancy records without values unless asked, private state_dir files, and a cutover whose proxy
dies mid-way that ends with its step report."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import zstandard
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from proxy import statedir
from proxy.cli import main
from proxy.config import load_config
from proxy.control.adminclient import admin_target
from proxy.durable import temp_name
from tests.support.paths import ROOT
from tests.support.proxy_process import ProxyProcess, cli_command, run_cli, write_config

ENV = {"PYTHONPATH": os.pathsep.join(sys.path)}

LEGACY = {"user:1": {"name": "ada"}, "user:2": {"name": "bob"}}


def legacy_setup(folder: Path, **extra: object) -> Path:
    """A config with a legacy JSON file (two keys) as old, a jsondir store as new."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "legacy.json").write_text(json.dumps(LEGACY))
    return write_config(folder, old={"type": "jsonfile", "path": "legacy.json"},
                        new={"type": "jsondir", "path": "docs"}, **extra)


def archived_keys(path: Path) -> list[str]:
    with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
        lines = reader.read().splitlines()
    return [json.loads(line)[0] for line in lines[1:-1]]


# --- item 9: archive and restore ------------------------------------------------------------------

def test_archive_refuses_an_existing_file_unless_forced(tmp_path: Path) -> None:
    """`turnout archive OUT` over an existing file exits 2 and leaves it as it was; --force replaces it."""
    config = legacy_setup(tmp_path / "proxy")
    out = tmp_path / "snapshot.tzst"
    out.write_bytes(b"precious")
    refused = run_cli(config, "archive", str(out))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "exists already" in refused.stderr
    assert "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert out.read_bytes() == b"precious"
    forced = run_cli(config, "archive", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert sorted(archived_keys(out)) == sorted(LEGACY)


def test_archive_never_writes_through_a_planted_partial_link(tmp_path: Path) -> None:
    """A symlink planted at OUT.partial is refused (exit 2), its target untouched and no OUT written."""
    config = legacy_setup(tmp_path / "proxy")
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    out = tmp_path / "snapshot.tzst"
    (tmp_path / "snapshot.tzst.partial").symlink_to(victim)
    done = run_cli(config, "archive", str(out))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "partial exists" in done.stderr
    assert "Traceback" not in done.stderr
    assert victim.read_text() == "do not touch"
    assert not out.exists()


@pytest.mark.parametrize("target", ["legacy.json", "legacy.json.lock", "docs/user%3A1.json", "docs",
                                    "state/override.json", "link-to-legacy.json"])
def test_archive_never_writes_over_a_stores_own_files_even_forced(tmp_path: Path, target: str) -> None:
    """An OUT that is (or resolves to) a store's file, its lock, a jsondir folder's content or state_dir
    is refused with exit 2, --force or not, and the legacy store keeps its JSON."""
    folder = tmp_path / "proxy"
    config = legacy_setup(folder)
    (folder / "docs").mkdir()
    (folder / "state").mkdir()
    (folder / "link-to-legacy.json").symlink_to(folder / "legacy.json")
    for force in ((), ("--force",)):
        done = run_cli(config, "archive", str(folder / target), "--store", "old", *force)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "refusing to write an archive over" in done.stderr
        assert "Traceback" not in done.stderr
        assert json.loads((folder / "legacy.json").read_text()) == LEGACY


def test_restore_never_follows_a_planted_temporary_link(tmp_path: Path) -> None:
    """A symlink planted where the legacy store writes its temporary file is replaced, not followed:
    the restore lands in the store and the link's target is unchanged."""
    config = legacy_setup(tmp_path / "proxy")
    out = tmp_path / "snapshot.tzst"
    assert main(["archive", str(out), "--config", str(config)]) == 0
    legacy = tmp_path / "proxy" / "legacy.json"
    legacy.write_text("{}")
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    # In process, so that the temporary file's name (it holds the pid) is known beforehand.
    temp_name(legacy).symlink_to(victim)
    assert main(["restore", str(out), "--store", "old", "--config", str(config)]) == 0
    assert victim.read_text() == "do not touch"
    assert json.loads(legacy.read_text()) == LEGACY
    assert not temp_name(legacy).is_symlink()


# --- item 8: a cutover whose proxy dies mid-way --------------------------------------------------

def seed(folder: Path, keys: int) -> Path:
    """A config with `keys` legacy documents as old, SQLite as new, every operation on new's side."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "legacy.json").write_text(json.dumps({f"k{i:06}": {"i": i, "pad": "x" * 50} for i in range(keys)}))
    config = write_config(folder, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    (folder / "flags.yaml").write_text("use_new_storage: true\n")
    return config


def wait_for(condition: Callable[[admin_pb2.StatusResponse], bool], stub: admin_pb2_grpc.AdminStub,
             command: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition(stub.Status(admin_pb2.StatusRequest(), timeout=5)):
        assert command.poll() is None, command.communicate()
        assert time.monotonic() < deadline, f"the command never reached {what}"
        time.sleep(0.02)


def killed_when(folder: Path, keys: int, args: list[str], reached: Callable[[admin_pb2.StatusResponse], bool],
                what: str) -> subprocess.CompletedProcess[str]:
    """Run a real `turnout ARGS --json`, SIGKILL its proxy once `reached` holds, and let it finish."""
    config = seed(folder, keys)
    proxy = ProxyProcess(config, env=ENV).start()
    try:
        statedir.record_verify(folder / "state", {"clean": True})
        channel = grpc.insecure_channel(admin_target(load_config(config)))
        command = cli_command(config, *args, "--json")
        running = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **ENV}, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            with channel:
                wait_for(reached, admin_pb2_grpc.AdminStub(channel), running, what)
            proxy.kill()
            stdout, stderr = running.communicate(timeout=60)
        finally:
            if running.poll() is None:
                running.kill()
                running.communicate()
    finally:
        proxy.stop()
    return subprocess.CompletedProcess(command, running.returncode, stdout, stderr)


def failed_steps(report: dict[str, Any]) -> list[str]:
    return [step["name"] for step in report["steps"] if not step["ok"]]


def _watching(status: admin_pb2.StatusResponse) -> bool:
    """Switched to new with writes resumed: the cutover is in its health watch."""
    return status.override.active and status.override.route == "new" and not status.writes.paused


@pytest.mark.slow
def test_a_cutover_whose_proxy_dies_in_the_monitor_window_ends_with_its_report(tmp_path: Path) -> None:
    """SIGKILL the proxy while a cutover watches health after the switch: exit 1, no traceback, and a
    report naming the failed step and that routing back to old could not be undone."""
    done = killed_when(tmp_path, 100, ["cutover", "--monitor", "60", "--pause-lease", "2"], _watching, "the watch")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert report["rolled_back"]
    assert failed_steps(report) == ["watch health 60s", "roll back (automatic)"]
    assert "UNAVAILABLE" in report["steps"][-2]["detail"]
    assert "could not undo: routing back to old" in report["steps"][-1]["detail"]
    (not_undone,) = report["not_undone"]
    assert "turnout rollback" in not_undone
    incidents = list((tmp_path / "state" / statedir.INCIDENTS_DIR).glob("*-cutover.json"))
    assert len(incidents) == 1


@pytest.mark.slow
def test_a_cutover_whose_proxy_dies_while_writes_are_paused_ends_with_its_report(tmp_path: Path) -> None:
    """SIGKILL the proxy while a cutover holds writes paused: exit 1, no traceback, the step failed, and
    the report says resuming writes was left to the pause's lease."""
    done = killed_when(tmp_path, 40_000, ["cutover", "--monitor", "0", "--pause-lease", "2"],
                       lambda s: s.writes.paused, "the write pause")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert report["rolled_back"]
    failed, undo = failed_steps(report)
    # Seen paused, the proxy may die before the cutover heard back, in the drain or (most often) the final sync.
    assert failed in ("pause writes", "drain replication", "final sync")
    assert undo == "roll back (automatic)"
    assert "routing was never changed" in report["steps"][-1]["detail"]
    (not_undone,) = report["not_undone"]
    assert "resuming writes" in not_undone
    assert "lease" in not_undone


@pytest.mark.slow
def test_a_rollback_whose_proxy_dies_ends_with_its_report(tmp_path: Path) -> None:
    """SIGKILL the proxy once `turnout rollback` has routed everything to old: exit 1, no traceback,
    and a report whose failed step says the proxy went away (this already held before issue 16)."""
    done = killed_when(tmp_path, 40_000, ["rollback"], lambda s: s.override.active and s.override.route == "old",
                       "the override")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert report["steps"][0]["ok"]
    (failed,) = failed_steps(report)
    detail = next(s["detail"] for s in report["steps"] if s["name"] == failed)
    # The drain says so itself; a sync back or verify job says it through the job follower.
    assert any(why in detail for why in ("not answering", "failed in the proxy")), detail


# --- item 5: discrepancy records without values, private state_dir ------------------------------

SECRET_OLD = {"card": "4111-1111-1111-1111", "name": "ada", "tags": ["a", "b"]}
SECRET_NEW = {"card": "5500-0000-0000-0004", "name": "ada", "tags": ["a"]}


def shadow_setup(folder: Path, record_values: bool | None = None) -> Path:
    """Old (legacy file) and new (jsondir) disagree on key "pay"; shadow mode on, old primary."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "legacy.json").write_text(json.dumps({"pay": SECRET_OLD}))
    (folder / "docs").mkdir()
    (folder / "docs" / "pay.json").write_text(json.dumps(SECRET_NEW))
    (folder / "flags.yaml").write_text("use_new_storage: true\nshadow_mode_enabled: true\n")
    extra: dict[str, Any] = {} if record_values is None else {"discrepancies": {"record_values": record_values}}
    return write_config(folder, old={"type": "jsonfile", "path": "legacy.json"},
                        new={"type": "jsondir", "path": "docs"}, **extra)


def one_discrepancy(folder: Path, config: Path) -> tuple[dict[str, Any], dict[str, Any], str, bytes]:
    """Make the proxy find one: its record in /discrepancies.json, in `turnout discrepancies --json`,
    the command's text, and the log's bytes."""
    with ProxyProcess(config, env=ENV) as proxy, grpc.insecure_channel(proxy.target) as channel:
        kv_pb2_grpc.KeyValueStub(channel).Get(kv_pb2.GetRequest(key="pay"), timeout=5)
        http = statedir.read_address(folder / "state", statedir.HTTP_ADDRESS_FILE)
        deadline = time.monotonic() + 10
        while not (log := folder / "state" / statedir.DISCREPANCY_LOG_FILE).exists() or b"pay" not in log.read_bytes():
            assert time.monotonic() < deadline, "the discrepancy never reached the log"
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://{http}/discrepancies.json", timeout=5) as reply:
            served = json.loads(reply.read())["first"][0]
    done = run_cli(config, "discrepancies", "--json", env=ENV)
    assert done.returncode == 0, done.stderr
    text = run_cli(config, "discrepancies", env=ENV)
    assert text.returncode == 0, text.stderr
    return served, json.loads(done.stdout)["first"][0], text.stdout, log.read_bytes()


def test_discrepancy_records_hold_sizes_digests_and_paths_but_no_values(tmp_path: Path) -> None:
    """With record_values off (the default), no value reaches the log, /discrepancies.json or
    `turnout discrepancies`: each side's size and digest and the differing paths do, and the key."""
    config = shadow_setup(tmp_path)
    served, reported, text, log = one_discrepancy(tmp_path, config)
    for secret in (b"4111-1111", b"5500-0000"):
        assert secret not in log
        assert secret.decode() not in json.dumps(served) + json.dumps(reported) + text
    for record in (served, reported):
        assert (record["key"], record["kind"], record["primary"], record["shadow"]) == ("pay", "value_mismatch",
                                                                                        None, None)
        assert record["values"] is False
        assert record["primary_size"] > 0  # as the legacy file holds it (compact)
        assert record["shadow_size"] == len(json.dumps(SECRET_NEW))  # the jsondir file as written
        assert len(record["primary_digest"]) == 16
        assert record["primary_digest"] != record["shadow_digest"]
        assert record["paths"] == ["$.card", "$.tags[1]"]
    assert "differ at $.card, $.tags[1]" in text
    assert "(values not recorded)" in text


def test_discrepancy_records_hold_values_when_the_config_asks(tmp_path: Path) -> None:
    """With `discrepancies: {record_values: true}` both documents are recorded and shown, beside the rest."""
    config = shadow_setup(tmp_path, record_values=True)
    served, reported, text, log = one_discrepancy(tmp_path, config)
    assert b"4111-1111" in log
    for record in (served, reported):
        assert json.loads(record["primary"]) == SECRET_OLD
        assert json.loads(record["shadow"]) == SECRET_NEW
        assert record["values"] is True
        assert record["paths"] == ["$.card", "$.tags[1]"]
    assert "4111-1111" in text


def test_state_dir_is_the_proxy_users_alone_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 0, state_dir is 0700 and what the proxy writes there (log, queue, addresses, override,
    last good flags) is 0600, while the legacy store keeps the mode legacy files are written with."""
    config = shadow_setup(tmp_path)
    legacy = tmp_path / "legacy.json"
    legacy.chmod(0o644)
    previous = os.umask(0)
    try:
        one_discrepancy(tmp_path, config)
        with ProxyProcess(config, env=ENV) as proxy, grpc.insecure_channel(proxy.target) as channel:
            kv_pb2_grpc.KeyValueStub(channel).Set(kv_pb2.SetRequest(key="k", value=b"1"), timeout=5)
            assert run_cli(config, "rollback", "--reason", "modes", env=ENV).returncode == 0
    finally:
        os.umask(previous)
    state = tmp_path / "state"
    assert _mode(state) == 0o700
    made = sorted(path.name for path in state.rglob("*") if path.is_file())
    assert {statedir.DISCREPANCY_LOG_FILE, statedir.QUEUE_FILE, statedir.ADMIN_ADDRESS_FILE,
            statedir.OVERRIDE_FILE, statedir.LAST_GOOD_FILE} <= set(made), made
    loose = {path.name: oct(_mode(path)) for path in state.rglob("*") if path.is_file() and _mode(path) & 0o077}
    assert loose == {}
    assert all(_mode(path) == 0o700 for path in state.rglob("*") if path.is_dir())
    assert _mode(legacy) == 0o644  # rewritten by the Set, not made private: the old application reads it


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)
