"""The cutover's write pause has a lease: a cutover that dies while writes are paused leaves the proxy
to resume them by itself, and one that runs normally (a slow final sync included) keeps renewing it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from turnout import SyncClient, TurnoutError
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy import statedir
from proxy.admin.service import AdminService
from proxy.admin.state import AdminState
from proxy.backends.memory import MemoryBackend
from proxy.config import BackendSpec, load_config
from proxy.control.adminclient import admin_target
from proxy.control.cutover import cutover
from proxy.control.report import Follow, summary
from proxy.data.discrepancies import DiscrepancyLog
from proxy.data.dispatcher import Dispatcher
from proxy.data.keylocks import KeyLocks
from proxy.data.plane import DataPlane
from proxy.data.writegate import WriteGate
from proxy.replication.local import ReplicationQueue
from proxy.routing.router import Route
from proxy.routing.watcher import FlagWatcher
from proxy.telemetry.tracing import Telemetry
from tests.support.fake_admin import FakeAdmin, clean_result
from tests.support.paths import ROOT
from tests.support.proxy_process import ProxyProcess, cli_command, run_cli, run_turnout, write_config
from tests.support.servers import spec_document
from tests.support.servers.postgres import PostgresServer

ENV = {"PYTHONPATH": os.pathsep.join(sys.path)}


# --- the proxy's side: admin.PauseWrites with a lease -------------------------------------------

class Aborted(Exception):
    pass


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def admin_service(tmp_path: Path) -> tuple[AdminService, WriteGate, AdminState]:
    """The admin service over a real data plane on memory stores; the write gate it steers."""
    (tmp_path / "flags.yaml").write_text("revision: r1\n")
    watcher = FlagWatcher(tmp_path / "flags.yaml", tmp_path)
    watcher.load_initial()
    old, new = MemoryBackend(), MemoryBackend()
    locks = KeyLocks()
    queue = ReplicationQueue(MemoryBackend(), {"old": old, "new": new}, locks)
    dispatcher = Dispatcher({Route.OLD: old, Route.NEW: new}, watcher, queue, locks, DiscrepancyLog(tmp_path))
    state = AdminState(watcher=watcher, plane=DataPlane(dispatcher, watcher), started=time.time(),
                       state_dir=tmp_path, telemetry=Telemetry(enabled=False))
    return AdminService(state), dispatcher.gate, state


def pause(lease: float = 0.0, paused: bool = True, renew: bool = False) -> admin_pb2.PauseWritesRequest:
    return admin_pb2.PauseWritesRequest(paused=paused, reason="cutover", lease_seconds=lease, renew=renew)


async def test_a_pause_whose_lease_runs_out_resumes_writes_and_says_so(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    service, gate, _ = admin_service(tmp_path)
    state = await service.PauseWrites(pause(0.3), Context())
    assert state.paused
    assert state.lease_expires_unix > time.time()
    for _ in range(4):  # renewed past several leases: still paused
        await asyncio.sleep(0.15)
        assert (await service.PauseWrites(pause(0.3, renew=True), Context())).paused
    assert gate.paused == "cutover"
    await asyncio.sleep(0.5)  # no renewal: the proxy resumes writes itself
    assert gate.paused is None
    state = await service.PauseWrites(pause(0.3, renew=True), Context())  # a late renewal never pauses again
    assert not state.paused
    assert gate.paused is None
    assert (state.leases_expired, state.last_lease_expired_reason) == (1, "cutover")
    assert state.last_lease_expired_unix > 0
    assert "ran out without renewal" in caplog.text


async def test_a_pause_without_a_lease_holds_and_a_resume_cancels_the_lease(tmp_path: Path) -> None:
    service, gate, _ = admin_service(tmp_path)
    await service.PauseWrites(pause(0.2), Context())
    await service.PauseWrites(pause(paused=False), Context())  # resumed: the lease is gone with the pause
    await service.PauseWrites(pause(), Context())  # an old client's pause: no lease, held until resumed
    await asyncio.sleep(0.4)
    assert gate.paused == "cutover"
    state = await service.PauseWrites(pause(0.2, renew=True), Context())  # no lease to renew: nothing changes
    assert (state.paused, state.lease_expires_unix, state.leases_expired) == (True, 0.0, 0)
    await asyncio.sleep(0.4)
    assert gate.paused == "cutover"
    await service.PauseWrites(pause(0.2), Context())  # a leased pause replaces an unleased one
    await service.PauseWrites(pause(), Context())  # and an unleased one a leased one
    await asyncio.sleep(0.4)
    assert gate.paused == "cutover"
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(Aborted, match="lease_seconds"):
            await service.PauseWrites(pause(bad), Context())


# --- the cutover's side: renewing from a thread while it works -----------------------------------

class LeasingAdmin(FakeAdmin):
    """The admin calls of a cutover against a proxy that honours leases (on the monotonic clock)."""

    def __init__(self, honour_renewals: bool = True) -> None:
        super().__init__()
        self.honour_renewals = honour_renewals
        self.lock = threading.Lock()
        self.paused_until: float | None = None  # inf: paused without a lease
        self.expired = 0

    def paused(self) -> bool:
        with self.lock:
            if self.paused_until is not None and time.monotonic() > self.paused_until:
                self.paused_until = None
                self.expired += 1
            return self.paused_until is not None

    def PauseWrites(self, request: admin_pb2.PauseWritesRequest, timeout: float) -> admin_pb2.PauseState:
        if request.renew:
            if self.paused() and self.honour_renewals:
                with self.lock:
                    self.paused_until = time.monotonic() + request.lease_seconds
                    self.renewals += 1
        else:
            self.calls.append("pause" if request.paused else "resume")
            with self.lock:
                self.paused_until = (time.monotonic() + (request.lease_seconds or float("inf"))
                                     if request.paused else None)
        return admin_pb2.PauseState(paused=self.paused(), leases_expired=self.expired)


def slow_follow(admin: LeasingAdmin, seconds: float) -> Follow:
    def follow(job: Any, label: str) -> dict[str, Any]:
        if job == "final sync":
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:  # writes stay paused all through the slow sync
                assert admin.paused(), "the pause ran out during the final sync"
                time.sleep(0.02)
        return clean_result()
    return follow


def test_a_slow_final_sync_is_not_cut_short_by_the_lease(tmp_path: Path) -> None:
    statedir.record_verify(tmp_path, {"clean": True})
    admin = LeasingAdmin()
    report = cutover(cast(admin_pb2_grpc.AdminStub, admin), tmp_path, slow_follow(admin, 1.2), 0,
                           lease_s=0.3)
    assert report.ok, summary(report)
    assert admin.calls == ["pause", "override new", "resume"]
    assert admin.expired == 0
    assert admin.renewals >= 8  # every 0.075 s for 1.2 s
    assert report.pause_lease_s == 0.3
    assert report.pause_lease_lost == ""
    renewals = admin.renewals
    time.sleep(0.3)
    assert admin.renewals == renewals  # the renewer stopped with the cutover
    assert not admin.paused()


def test_a_cutover_whose_lease_ran_out_rolls_back_instead_of_switching(tmp_path: Path) -> None:
    """Writes went through once the proxy resumed them: the final sync missed them, so no switch."""
    statedir.record_verify(tmp_path, {"clean": True})
    admin = LeasingAdmin(honour_renewals=False)

    def follow(job: Any, label: str) -> dict[str, Any]:
        time.sleep(0.5 if job == "final sync" else 0)
        return clean_result()

    report = cutover(cast(admin_pb2_grpc.AdminStub, admin), tmp_path, follow, 0, lease_s=0.2)
    assert not report.ok
    assert report.rolled_back
    assert "override new" not in admin.calls
    assert "lease ran out" in report.pause_lease_lost
    assert [s.name for s in report.steps if not s.ok] == ["final sync"]
    assert "lease ran out" in summary(report)
    assert [(r.automatic, "lease ran out" in r.reason) for r in admin.rollbacks] == [(True, True)]


# --- a real `turnout serve` and a real `turnout cutover` ----------------------------------------

def seed(folder: Path, keys: int, new: BackendSpec) -> Path:
    (folder / "legacy.json").write_text(json.dumps({f"k{i:06}": {"i": i, "pad": "x" * 50} for i in range(keys)}))
    config = write_config(folder, old={"type": "jsonfile", "path": "legacy.json"},
                          new={**spec_document(new), "call_timeout": 30})
    (folder / "flags.yaml").write_text("use_new_storage: true\n")
    return config


@contextlib.contextmanager
def table_held(server: PostgresServer, spec: BackendSpec, seconds: float) -> Iterator[None]:
    """Another session holds new's table locked for `seconds`: the final sync's reads and writes of it
    wait that long, a slow final sync that no machine's speed makes quick."""
    table = spec.options["table"]
    server.sql(f"CREATE TABLE IF NOT EXISTS {table} (key text COLLATE \"C\" PRIMARY KEY, value jsonb NOT NULL)")
    holder = threading.Thread(target=server.sql, args=(
        f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({seconds}); COMMIT;",))
    holder.start()
    time.sleep(0.5)  # the lock is taken before the cutover starts
    try:
        yield
    finally:
        holder.join(timeout=seconds + 30)


def admin(config: Path) -> tuple[admin_pb2_grpc.AdminStub, grpc.Channel]:
    channel = grpc.insecure_channel(admin_target(load_config(config)))
    return admin_pb2_grpc.AdminStub(channel), channel


@pytest.mark.slow
def test_a_killed_cutover_leaves_writes_paused_only_until_its_lease_runs_out(
        tmp_path: Path, postgres_server: PostgresServer, postgres_spec: BackendSpec) -> None:
    """SIGKILL a real `turnout cutover --monitor 30` during its final sync (paused for longer than its
    lease by then, so renewals worked): writes are refused, then flow again within the lease."""
    lease = 1.0
    config = seed(tmp_path, 2_000, postgres_spec)
    with ProxyProcess(config, env=ENV) as proxy, SyncClient(proxy.target, timeout=5) as client, \
            table_held(postgres_server, postgres_spec, 6 * lease):  # a final sync of several seconds
        statedir.record_verify(tmp_path / "state", {"clean": True})
        stub, channel = admin(config)
        cutover = subprocess.Popen(
            cli_command(config, "cutover", "--monitor", "30", "--pause-lease", str(lease), "--json"),
            cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while not stub.Status(admin_pb2.StatusRequest(), timeout=5).writes.paused:
                assert cutover.poll() is None, cutover.communicate()
                assert time.monotonic() < deadline, "the cutover never paused writes"
                time.sleep(0.02)
            paused_at = time.monotonic()
            time.sleep(2.5 * lease)  # well past one lease: the cutover's renewals keep the pause
            status = stub.Status(admin_pb2.StatusRequest(), timeout=5)
            assert status.writes.paused, "the pause ended before the final sync was done"
            assert status.writes.leases_expired == 0
            assert cutover.poll() is None
            assert not status.override.active
        finally:
            cutover.send_signal(signal.SIGKILL)
            cutover.communicate()
        killed_at = time.monotonic()
        with pytest.raises(TurnoutError, match="paused"):
            client.set("after-kill", 1)  # the proxy still holds the dead cutover's pause...
        while True:  # ...until its lease runs out
            try:
                client.set("after-kill", 1)
                break
            except TurnoutError:
                assert time.monotonic() - killed_at < lease + 2, "writes stayed paused past the lease"
                time.sleep(0.05)
        resumed_after = time.monotonic() - killed_at
        assert client.get("after-kill") == 1
        writes = stub.Status(admin_pb2.StatusRequest(), timeout=5).writes
        channel.close()
        assert time.monotonic() - paused_at > 2.5 * lease
        assert resumed_after <= lease + 2
        assert not writes.paused
        assert (writes.leases_expired, writes.last_lease_expired_reason) == (1, "cutover")
        assert writes.last_lease_expired_unix > 0
        status_cli = run_cli(config, "status", "--json", env=ENV, timeout=30)
        assert json.loads(status_cli.stdout)["writes"]["leases_expired"] == 1
        status_text = run_cli(config, "status", env=ENV, timeout=30)
        assert "writes resumed by the proxy 1 time(s): a pause lease ran out" in status_text.stdout
    assert "ran out without renewal" in "".join(proxy.output)


@pytest.mark.slow
def test_a_cutover_with_a_short_lease_runs_through_a_slow_final_sync(
        tmp_path: Path, postgres_server: PostgresServer, postgres_spec: BackendSpec) -> None:
    """A real cutover whose final sync outlasts its lease several times: renewed all along, it succeeds."""
    lease = 0.5
    config = seed(tmp_path, 2_000, postgres_spec)
    with ProxyProcess(config, env=ENV):
        statedir.record_verify(tmp_path / "state", {"clean": True})
        with table_held(postgres_server, postgres_spec, 6 * lease):
            report = run_turnout(config, "cutover", "--monitor", "0", "--pause-lease", str(lease), env=ENV)
        stub, channel = admin(config)
        with channel:
            status = stub.Status(admin_pb2.StatusRequest(), timeout=5)
    assert report["ok"], report
    assert not report["rolled_back"]
    assert report["pause_lease_s"] == lease
    assert report["pause_lease_lost"] == ""
    final_sync = next(s for s in report["steps"] if s["name"] == "final sync")
    assert final_sync["duration_s"] > 2 * lease, "the final sync was too quick to prove anything"
    assert report["write_pause_s"] > 2 * lease
    assert status.writes.leases_expired == 0
    assert not status.writes.paused
    assert (status.override.active, status.override.route) == (True, "new")
