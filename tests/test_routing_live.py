"""Every routing rule of contract §3, held against a running `turnout serve` whose flag file is edited live."""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from turnout import SyncClient, Unavailable
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy.cli import main
from proxy.router import bucket
from tests.proxy_process import ProxyProcess, write_config
from tests.stores import legacy_contents, seed_sqlite, sqlite_contents

RELOAD_S = 2.0


class Live:
    def __init__(self, folder: Path, proxy: ProxyProcess) -> None:
        self.folder = folder
        self.proxy = proxy
        self.client = SyncClient(proxy.target, timeout=5)

    def flags(self, text: str) -> None:
        """Replace the flag file the way an editor does (write a temp file, rename it over)."""
        temp = self.folder / "flags.yaml.tmp"
        temp.write_text(text)
        os.replace(temp, self.folder / "flags.yaml")

    def served_by(self, key: str, user: str | None = None) -> str:
        client = self.client if user is None else SyncClient(self.proxy.target, user=user, timeout=5)
        value = client.get(key)
        return str(value["from"])

    def status(self) -> admin_pb2.StatusResponse:
        """The running proxy's status, from its admin API."""
        address = (self.folder / "state" / "admin.address").read_text().strip()
        with grpc.insecure_channel(address) as channel:
            reply: admin_pb2.StatusResponse = admin_pb2_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest(),
                                                                                      timeout=5)
        return reply

    def revision(self) -> str:
        return self.status().reload.revision

    def cli(self, *args: str) -> int:
        return main([*args, "--config", str(self.folder / "turnout.yaml")])


def eventually(check: Callable[[], bool], timeout: float = RELOAD_S + 1.0) -> None:
    """Wait for check to hold: a flag change must take effect within 2 s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the change did not take effect in time"
        time.sleep(0.05)


def keys_by_bucket(below: int, count: int) -> tuple[list[str], list[str]]:
    """Keys whose bucket is below / not below a threshold, for percentage checks."""
    inside = [k for k in (f"p:{i}" for i in range(400)) if bucket(k, "") < below][:count]
    outside = [k for k in (f"p:{i}" for i in range(400)) if bucket(k, "") >= below][:count]
    return inside, outside


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """A proxy on a legacy JSON file and SQLite, both seeded with values that say which store they came from."""
    keys = ["user:1", "session:9", "billing:3", *[f"p:{i}" for i in range(400)]]
    (tmp_path / "legacy.json").write_text(json.dumps({k: {"from": "old"} for k in keys}))
    seed_sqlite(tmp_path / "new.sqlite", {k: {"from": "new"} for k in keys})
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    (tmp_path / "flags.yaml").write_text("revision: start\n")
    with ProxyProcess(config) as proxy:
        live = Live(tmp_path, proxy)
        yield live
        live.client.close()


def test_defaults_send_everything_to_old(live: Live) -> None:
    """With the shipped defaults every read is served by old."""
    assert live.served_by("user:1") == "old"
    assert live.served_by("session:9", user="checkout") == "old"


def test_kill_switch_and_percentage(live: Live) -> None:
    """read 100 moves reads to new; use_new_storage: false brings them all back at once."""
    live.flags("use_new_storage: true\ntraffic_percentage: {read: 100}\n")
    eventually(lambda: live.served_by("user:1") == "new")
    live.flags("use_new_storage: false\ntraffic_percentage: {read: 100}\n")
    eventually(lambda: live.served_by("user:1") == "old")


def test_disabled_keys_stay_on_old(live: Live) -> None:
    """A key matching disabled_for_keys is served by old even at 100 % and for an enabled user."""
    live.flags("use_new_storage: true\ntraffic_percentage: {read: 100}\ndisabled_for_keys: ['^billing:']\n"
               "enabled_for_users: [checkout]\n")
    eventually(lambda: live.served_by("user:1") == "new")
    assert live.served_by("billing:3") == "old"
    assert live.served_by("billing:3", user="checkout") == "old"


def test_enabled_users_go_to_new(live: Live) -> None:
    """Only the callers named in enabled_for_users are served by new."""
    live.flags("use_new_storage: true\nenabled_for_users: [checkout]\n")
    eventually(lambda: live.served_by("user:1", user="checkout") == "new")
    assert live.served_by("user:1", user="search") == "old"
    assert live.served_by("user:1") == "old"


def test_enabled_keys_go_to_new(live: Live) -> None:
    """Keys matching enabled_for_keys are served by new, others by old."""
    live.flags("use_new_storage: true\nenabled_for_keys: ['^session:']\n")
    eventually(lambda: live.served_by("session:9") == "new")
    assert live.served_by("user:1") == "old"


def test_percentage_follows_the_bucket(live: Live) -> None:
    """At read 30 %, exactly the keys with bucket < 3000 are served by new."""
    inside, outside = keys_by_bucket(3000, 20)
    live.flags("use_new_storage: true\ntraffic_percentage: {read: 30}\n")
    eventually(lambda: live.served_by(inside[0]) == "new")
    assert [live.served_by(k) for k in inside] == ["new"] * len(inside)
    assert [live.served_by(k) for k in outside] == ["old"] * len(outside)


def test_read_only_refuses_writes_and_serves_reads(live: Live) -> None:
    """read_only: true makes Set and Delete fail with UNAVAILABLE saying so, while reads go on."""
    live.flags("read_only: true\nrevision: window\n")
    eventually(lambda: live.revision() == "window")
    with pytest.raises(Unavailable, match="read_only: true"):
        live.client.set("user:1", {"from": "caller"})
    with pytest.raises(Unavailable, match="read_only"):
        live.client.delete("user:1")
    assert live.served_by("user:1") == "old"
    assert legacy_contents(live.folder / "legacy.json")["user:1"] == {"from": "old"}


def test_invalid_flag_file_keeps_the_last_good_flags(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken edit is refused: routing stays as it was and status shows the error."""
    live.flags("use_new_storage: true\ntraffic_percentage: {read: 100}\nrevision: good\n")
    eventually(lambda: live.served_by("user:1") == "new")
    capsys.readouterr()
    live.flags("use_new_storage: true\ntraffic_percentage: {read: 1000}\n")

    def reported() -> bool:
        assert live.cli("status", "--json") == 0
        status: dict[str, Any] = json.loads(capsys.readouterr().out)
        return int(status["reload"]["failures"]) > 0

    eventually(reported)
    assert live.served_by("user:1") == "new"
    assert live.cli("status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert "traffic_percentage.read" in status["reload"]["last_error"]
    assert status["flags"]["revision"] == "good"


def test_rollback_override_stands_above_the_file_until_resume(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout rollback` sends everything to old over the file, syncing back what only new had;
    `turnout resume` hands control back to the file."""
    live.flags("use_new_storage: true\ntraffic_percentage: {read: 100}\n")
    eventually(lambda: live.served_by("user:1") == "new")
    assert live.cli("rollback", "--reason", "incident 7") == 0
    # Old now answers, and holds what new had (the seeded stores differed on every key).
    assert legacy_contents(live.folder / "legacy.json")["user:1"] == {"from": "new"}
    assert list((live.folder / "state" / "incidents").glob("*-rollback.json"))
    capsys.readouterr()
    assert live.cli("route", "user:1", "--json") == 0
    explained = json.loads(capsys.readouterr().out)
    assert (explained["route"], explained["reason"]) == ("old", "override")
    assert live.cli("status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["override"]["active"] is True
    assert status["override"]["reason"] == "incident 7"
    assert live.cli("resume") == 0
    assert live.served_by("user:1") == "new"


def test_writes_reach_both_backends(live: Live) -> None:
    """A write taken by new first is replicated to old, and one taken by old reaches new."""
    live.flags("use_new_storage: true\nenabled_for_keys: ['^session:']\n")
    eventually(lambda: live.served_by("session:9") == "new")
    live.client.set("session:9", {"from": "caller-new"})
    live.client.set("user:1", {"from": "caller-old"})
    live.client.delete("billing:3")

    def converged() -> bool:
        old, new = legacy_contents(live.folder / "legacy.json"), sqlite_contents(live.folder / "new.sqlite")
        return (old.get("session:9") == new.get("session:9") == {"from": "caller-new"}
                and old.get("user:1") == new.get("user:1") == {"from": "caller-old"}
                and "billing:3" not in old and "billing:3" not in new)

    eventually(converged, timeout=10)


def test_shadow_mode_writes_both_at_once(live: Live) -> None:
    """In shadow mode a write lands on both backends by itself, with nothing left for the replayer."""
    live.flags("use_new_storage: true\nshadow_mode_enabled: true\nrevision: shadow\n")
    eventually(lambda: live.revision() == "shadow")
    live.client.set("shadowed", {"v": 1})

    def both() -> bool:
        return (legacy_contents(live.folder / "legacy.json").get("shadowed")
                == sqlite_contents(live.folder / "new.sqlite").get("shadowed") == {"v": 1})

    eventually(both, timeout=5)
    eventually(lambda: live.status().replication.depth == 0)
    assert live.status().replication.replayed == 0


def test_reloads_never_fail_a_call_in_flight(live: Live) -> None:
    """Flipping the flag file back and forth under steady traffic fails no call."""
    errors: list[Exception] = []
    stop = threading.Event()

    def traffic() -> None:
        with SyncClient(live.proxy.target, timeout=5) as client:
            i = 0
            while not stop.is_set():
                try:
                    client.set(f"t:{i % 50}", {"i": i})
                    client.get(f"t:{i % 50}")
                except Exception as exc:
                    errors.append(exc)
                i += 1

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        for n in range(8):
            live.flags(f"revision: flip-{n}\nuse_new_storage: true\ntraffic_percentage: {{read: {50 * (n % 3)}, "
                       f"write: {50 * ((n + 1) % 3)}}}\nshadow_mode_enabled: {'true' if n % 2 else 'false'}\n")
            eventually(functools.partial(lambda wanted: live.revision() == wanted, f"flip-{n}"))
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert errors == []
