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
from proxy.routing.router import bucket
from tests.support.proxy_process import ProxyProcess, configmap, get_page, http_address, swap, write_config
from tests.support.stores import legacy_contents, seed_sqlite, sqlite_contents

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
    """Flipping the flag file back and forth under steady traffic fails no call, and every caller reads
    back what it has just written, wherever the flip moved the key's reads (read-your-writes)."""
    errors: list[Exception | str] = []
    stop = threading.Event()

    def traffic(worker: int) -> None:
        with SyncClient(live.proxy.target, timeout=5) as client:
            i = 0
            while not stop.is_set():
                key = f"t{worker}:{i % 50}"
                try:
                    client.set(key, {"i": i})
                    got = client.get(key)
                    if got != {"i": i}:
                        errors.append(f"{key}: wrote {i}, read {got}")
                except Exception as exc:
                    errors.append(exc)
                i += 1

    workers = [threading.Thread(target=traffic, args=(n,)) for n in range(3)]
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


def test_configmap_update_reaches_a_running_proxy(tmp_path: Path) -> None:
    """The flag file in a Kubernetes ConfigMap volume (flags.yaml -> ..data/flags.yaml, ..data swapped
    to a new folder on update), named by a relative path in the config: each update takes effect."""
    mount = configmap(tmp_path / "flags", "revision: cm1\n")
    (tmp_path / "legacy.json").write_text(json.dumps({"user:1": {"from": "old"}}))
    seed_sqlite(tmp_path / "new.sqlite", {"user:1": {"from": "new"}})
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"}, flags="flags/flags.yaml")
    with ProxyProcess(config) as proxy:
        live = Live(tmp_path, proxy)
        try:
            assert live.revision() == "cm1"
            assert live.served_by("user:1") == "old"
            for n, route in ((2, "new"), (3, "old")):
                swap(mount, f"..v{n}", f"revision: cm{n}\nuse_new_storage: {'true' if route == 'new' else 'false'}\n"
                                       "traffic_percentage: {read: 100}\n")
                eventually(functools.partial(lambda wanted: live.revision() == wanted, f"cm{n}"))
                assert live.served_by("user:1") == route
        finally:
            live.client.close()


def test_status_json_shows_flags_reload_override_replication_and_backends(
        live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout status --json` has the revision and effective flags, the reload record, the override,
    the replication queue and each backend's health, with counts as JSON numbers; /status.json agrees."""
    live.flags("revision: s1\nuse_new_storage: true\ntraffic_percentage: {write: 100}\n")
    eventually(lambda: live.revision() == "s1")
    live.flags("revision: s2\nuse_new_storage: maybe\n")
    eventually(lambda: live.status().reload.failures == 1)
    assert live.cli("status", "--json") == 0
    status: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert status["flags"]["revision"] == status["reload"]["revision"] == "s1"
    assert status["flags"]["traffic_percentage"] == {"read": 0.0, "write": 100.0}
    reload = status["reload"]
    assert reload["failures"] == 1
    assert isinstance(reload["failures"], int)
    assert "flags.yaml:2: use_new_storage: must be true or false, got 'maybe'" in reload["last_error"]
    assert reload["last_attempt_unix"] > reload["last_success_unix"] > 0
    assert status["override"]["active"] is False
    assert set(status["replication"]) >= {"depth", "oldest_age_seconds", "replayed", "failures", "last_error"}
    assert isinstance(status["replication"]["depth"], int)
    assert [(b["name"], b["type"], b["healthy"]) for b in status["backends"]] == [
        ("old", "jsonfile", True), ("new", "sqlite", True)]
    served: dict[str, Any] = json.loads(get_page(http_address(live.folder / "state"), "/status.json"))
    assert served["reload"] == reload
    assert served["flags"] == status["flags"]
    assert isinstance(served["replication"]["depth"], int)
    assert live.cli("status") == 0
    text = capsys.readouterr().out
    for shown in ("LAST RELOAD FAILED", "failures 1", "effective flags:"):
        assert shown in text


def test_status_shows_operations_latency_and_on_request_record_counts(
        live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout status` shows operations by op and route and each backend's latency quantiles; with
    --records also each backend's record count and checksum, which agree for stores holding the same data."""
    live.client.set("extra:1", {"v": 1})
    assert live.served_by("user:1") == "old"
    assert live.cli("status", "--json") == 0
    status: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert status["shadow"]["operations"]["get"]["old"] >= 1
    assert status["shadow"]["operations"]["set"]["old"] == 1
    latency = status["shadow"]["latency"]["old"]["get"]
    assert latency["count"] >= 1
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert "records" not in status["shadow"]
    assert live.cli("status", "--json", "--records") == 0
    records = json.loads(capsys.readouterr().out)["shadow"]["records"]
    # Old holds the 403 seeded keys plus extra:1; new the 403 seeded keys with other values.
    assert records["old"]["records"] == 404
    assert records["new"]["records"] == 403
    assert records["old"]["checksum"] != records["new"]["checksum"]
    assert live.cli("status", "--records") == 0
    text = capsys.readouterr().out
    for shown in ("operations get: old", "latency old get: p50", "records old: 404, checksum"):
        assert shown in text


def operations(live: Live) -> dict[tuple[str, str], float]:
    """The proxy's turnout_operations_total by (op, route), from /metrics on the HTTP side (admin.http)."""
    text = get_page(http_address(live.folder / "state"), "/metrics")
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("turnout_operations_total{"):
            labels, value = line[len("turnout_operations_total{"):].split("} ")
            parsed = dict(part.split("=") for part in labels.split(","))
            counts[(parsed["op"].strip('"'), parsed["route"].strip('"'))] = float(value)
    return counts


def served_from(live: Live, key: str) -> str:
    """Which backend answered one Get of key, by the proxy's own operation counts."""
    before = operations(live)
    live.client.get(key)
    after = operations(live)
    (route,) = [r for (op, r), n in after.items() if op == "get" and n != before.get((op, r), 0)]
    return route


def test_write_percentage_sends_writes_of_keys_below_it_to_new_first(live: Live) -> None:
    """At write 30 % (read 0 %), a Set or Delete of a key with bucket < 3000 is taken by new, others by old;
    reads all stay on old."""
    inside, outside = keys_by_bucket(3000, 10)
    live.flags("revision: w30\nuse_new_storage: true\ntraffic_percentage: {read: 0, write: 30}\n")
    eventually(lambda: live.revision() == "w30")
    before = operations(live)
    for key in inside + outside:
        live.client.set(key, {"from": "caller"})
    live.client.delete(inside[0])
    live.client.delete(outside[0])
    after = operations(live)

    def delta(op: str, route: str) -> float:
        return after.get((op, route), 0) - before.get((op, route), 0)

    assert (delta("set", "new"), delta("set", "old")) == (len(inside), len(outside))
    assert (delta("delete", "new"), delta("delete", "old")) == (1, 1)
    assert live.served_by(outside[1]) == "caller"  # reads stay on old, which took this write itself ...
    eventually(lambda: live.served_by(inside[1]) == "caller")  # ... and gets new's writes replicated


def test_a_new_bucket_salt_reshuffles_the_percentage_live(live: Live) -> None:
    """Changing bucket_salt under a running proxy moves exactly the keys whose salted bucket changed side."""
    keys = [f"p:{i}" for i in range(60)]
    live.flags("revision: salt-a\nuse_new_storage: true\ntraffic_percentage: {read: 50}\nbucket_salt: a\n")
    eventually(lambda: live.revision() == "salt-a")
    assert [live.served_by(k) for k in keys] == ["new" if bucket(k, "a") < 5000 else "old" for k in keys]
    live.flags("revision: salt-b\nuse_new_storage: true\ntraffic_percentage: {read: 50}\nbucket_salt: b\n")
    eventually(lambda: live.revision() == "salt-b")
    assert [live.served_by(k) for k in keys] == ["new" if bucket(k, "b") < 5000 else "old" for k in keys]
    assert any((bucket(k, "a") < 5000) != (bucket(k, "b") < 5000) for k in keys)


def test_has_and_keys_follow_the_read_rules(live: Live) -> None:
    """Has is routed like Get; Keys is routed by its prefix, so a key pattern moves the listing too."""
    live.flags("revision: kill\nuse_new_storage: false\n")
    eventually(lambda: live.revision() == "kill")
    live.client.delete("session:9")  # under the kill switch: gone from old only
    live.flags("revision: hk\nuse_new_storage: true\nenabled_for_keys: ['^session:']\n")
    eventually(lambda: live.revision() == "hk")
    assert live.client.has("session:9")  # new answers
    assert list(live.client.keys("session:")) == ["session:9"]
    assert "session:9" not in list(live.client.keys(""))  # prefix "" is no session: key: old answers
    live.flags("revision: hk2\nuse_new_storage: true\nenabled_for_keys: ['^session:']\n"
               "disabled_for_keys: ['^session:9']\n")
    eventually(lambda: live.revision() == "hk2")
    assert not live.client.has("session:9")  # old answers
    assert list(live.client.keys("session:")) == ["session:9"]  # the listing's prefix is not disabled


def test_in_place_rewrite_and_rename_take_effect_within_two_seconds(live: Live) -> None:
    """Both ways an operator replaces the file reach the running proxy within the contract's 2 s."""
    for n, replace in enumerate(["in place", "rename", "in place", "rename"]):
        text = f"revision: t{n}\nuse_new_storage: true\ntraffic_percentage: {{read: {100 * (n % 2)}}}\n"
        started = time.monotonic()
        if replace == "in place":
            (live.folder / "flags.yaml").write_text(text)
        else:
            live.flags(text)
        eventually(functools.partial(lambda wanted: live.revision() == wanted, f"t{n}"), timeout=RELOAD_S)
        assert time.monotonic() - started < RELOAD_S
        assert live.served_by("user:1") == ("new" if n % 2 else "old")


def test_admin_api_is_on_the_admin_port_only(live: Live) -> None:
    """The admin service answers on admin.listen and not on the data port, where only KeyValue,
    health and reflection are served."""
    assert live.status().reload.revision == "start"
    with grpc.insecure_channel(live.proxy.target) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Status(admin_pb2.StatusRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as refused:
            stub.SetOverride(admin_pb2.SetOverrideRequest(route="old", reason="x"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert not live.status().override.active


def test_rollback_survives_a_restart_and_resume_clears_it(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    """The override is kept in state_dir: a restarted proxy still sends everything to old until
    `turnout resume`, and after resume a restart leaves the file in charge."""
    live.flags("revision: up\nuse_new_storage: true\ntraffic_percentage: {read: 100}\n")
    eventually(lambda: live.served_by("user:1") == "new")
    assert live.cli("rollback", "--reason", "incident 8") == 0
    for _ in range(2):
        live.proxy.stop()
        live.proxy.start()
        live.client.close()
        live.client = SyncClient(live.proxy.target, timeout=5)
        assert live.status().override.reason == "incident 8"
        capsys.readouterr()
        assert live.cli("route", "user:1", "--json") == 0
        assert json.loads(capsys.readouterr().out)["reason"] == "override"
        assert served_from(live, "user:1") == "old"
    assert live.cli("resume", "--json") == 0
    capsys.readouterr()
    live.proxy.stop()
    live.proxy.start()
    live.client.close()
    live.client = SyncClient(live.proxy.target, timeout=5)
    assert not live.status().override.active
    assert served_from(live, "user:1") == "new"


@pytest.mark.parametrize(("read", "write"), [(0, 100), (100, 0)])
def test_a_listing_right_after_a_write_reflects_it(live: Live, read: int, write: int) -> None:
    """Writes taken by one backend, listings served by the other: each listing made right after a Set or a
    Delete, while its copy may still be on the way to the listing's backend, reflects every acknowledged
    write, each key once."""
    live.flags(f"revision: split\nuse_new_storage: true\ntraffic_percentage: {{read: {read}, write: {write}}}\n")
    eventually(lambda: live.revision() == "split")
    before = operations(live)
    listed: set[str] = set()
    for n in range(40):
        live.client.set(f"w:{n}", {"n": n})
        listed.add(f"w:{n}")
        if n % 3 == 2:
            live.client.delete(f"w:{n - 1}")
            listed.discard(f"w:{n - 1}")
        keys = list(live.client.keys("w:"))
        assert len(keys) == len(set(keys)), keys
        assert set(keys) == listed, n
    after = operations(live)
    writes_on, lists_on = ("new", "old") if write == 100 else ("old", "new")
    assert after.get(("set", writes_on), 0) - before.get(("set", writes_on), 0) == 40
    assert after.get(("keys", lists_on), 0) - before.get(("keys", lists_on), 0) == 40
