"""Worker 0 speaks for a proxy of several workers: changes reach every worker, Status and /metrics
cover them all, and a worker that fails is named without leaving the proxy half changed.

Each worker here is built as proxy/serving/app.py builds one (its admin gRPC server and its aiohttp
HTTP side, each on a loopback port of its own), on SQLite stores they share, and worker 0 reaches the
others over real gRPC and HTTP.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy.admin.http import HttpSide
from proxy.admin.metrics import Families
from proxy.admin.service import build_admin_server
from proxy.admin.state import AdminState
from proxy.backends.base import Backend
from proxy.backends.memory import MemoryBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.cli import main
from proxy.data.discrepancies import DiscrepancyLog
from proxy.data.dispatcher import Call, Dispatcher
from proxy.data.keylocks import KeyLocks
from proxy.data.plane import DataPlane
from proxy.replication.local import ReplicationQueue
from proxy.routing.router import Route
from proxy.routing.watcher import FlagWatcher
from proxy.telemetry.tracing import Telemetry
from proxy.workers.relay import fetch_metrics, label_by_worker
from tests.support.proxy_process import write_config


@dataclass
class Worker:
    index: int
    state: AdminState
    dispatcher: Dispatcher
    queue: ReplicationQueue
    server: grpc.aio.Server
    http: HttpSide
    address: str = ""
    http_address: str = ""


@dataclass
class Proxy:
    """Workers in one process, worker 0 finding the others' admin APIs through `peers` and their HTTP
    sides through `http_peers` (which a test may change)."""

    workers: list[Worker]
    peers: list[tuple[int, str]] = field(default_factory=list)
    http_peers: list[tuple[int, str]] = field(default_factory=list)

    @property
    def zero(self) -> Worker:
        return self.workers[0]


def closed_port() -> str:
    """An address nothing listens on (a worker that died)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def start_worker(tmp_path: Path, index: int, old: Backend, new: Backend,
                       peers: Callable[[], Sequence[tuple[int, str]]],
                       http_peers: Callable[[], Sequence[tuple[int, str]]]) -> Worker:
    state_dir = tmp_path / f"state-{index}"
    state_dir.mkdir()
    watcher = FlagWatcher(tmp_path / "flags.yaml", state_dir)
    watcher.load_initial()
    locks = KeyLocks()
    queue = ReplicationQueue(MemoryBackend(), {"old": old, "new": new}, locks)
    dispatcher = Dispatcher({Route.OLD: old, Route.NEW: new}, watcher, queue, locks, DiscrepancyLog(state_dir))
    state = AdminState(watcher=watcher, plane=DataPlane(dispatcher, watcher), started=time.time(),
                       state_dir=state_dir, telemetry=Telemetry(enabled=False), serving=True, worker=index,
                       peers=peers, http_peers=http_peers)
    server = build_admin_server(state)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    http = HttpSide(state)
    worker = Worker(index, state, dispatcher, queue, server, http, address=f"127.0.0.1:{port}")
    worker.http_address = f"127.0.0.1:{await http.start('127.0.0.1', 0)}"
    return worker


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Proxy]:
    """Three workers on one pair of SQLite stores; writes go to old and are queued for new (not replayed)."""
    (tmp_path / "flags.yaml").write_text("revision: r1\nuse_new_storage: true\n")
    old = await SqliteBackend.open(tmp_path / "old.sqlite")
    new = await SqliteBackend.open(tmp_path / "new.sqlite")
    proxy = Proxy([])
    for index in range(3):
        peers: Callable[[], Sequence[tuple[int, str]]] = (lambda: list(proxy.peers)) if index == 0 else (lambda: ())
        http_peers: Callable[[], Sequence[tuple[int, str]]] = (
            (lambda: list(proxy.http_peers)) if index == 0 else (lambda: ()))
        proxy.workers.append(await start_worker(tmp_path, index, old, new, peers, http_peers))
    proxy.peers.extend((w.index, w.address) for w in proxy.workers[1:])
    proxy.http_peers.extend((w.index, w.http_address) for w in proxy.workers[1:])
    yield proxy
    for worker in proxy.workers:
        worker.dispatcher.gate.close()
        await worker.queue.stop()
        await worker.http.stop()
        await worker.server.stop(0)
    await old.close()
    await new.close()


async def admin(proxy: Proxy) -> tuple[admin_pb2_grpc.AdminAsyncStub, grpc.aio.Channel]:
    channel = grpc.aio.insecure_channel(proxy.zero.address)
    return admin_pb2_grpc.AdminStub(channel), channel


async def test_an_override_set_on_worker_0_reaches_every_worker_and_so_does_its_clearing(proxy: Proxy) -> None:
    """SetOverride and ClearOverride on worker 0 change every worker's flag watcher."""
    stub, channel = await admin(proxy)
    async with channel:
        state = await stub.SetOverride(admin_pb2.SetOverrideRequest(route="new", reason="test"))
        assert (state.active, state.route) == (True, "new")
        for worker in proxy.workers:
            override = worker.state.watcher.override
            assert override is not None
            assert (override.route, override.reason) == (Route.NEW, "test")
        await stub.ClearOverride(admin_pb2.ClearOverrideRequest())
        assert [w.state.watcher.override for w in proxy.workers] == [None, None, None]


async def test_a_pause_holds_on_every_worker_until_resumed_and_a_renewal_says_where_it_lapsed(proxy: Proxy) -> None:
    """PauseWrites pauses (with its lease) and resumes every worker; a renewal is paused only if all still are."""
    stub, channel = await admin(proxy)
    async with channel:
        state = await stub.PauseWrites(admin_pb2.PauseWritesRequest(paused=True, reason="cutover", lease_seconds=30))
        assert state.paused
        assert state.lease_expires_unix > time.time()
        assert [w.dispatcher.gate.paused for w in proxy.workers] == ["cutover"] * 3
        renewal = admin_pb2.PauseWritesRequest(paused=True, reason="cutover", lease_seconds=30, renew=True)
        assert (await stub.PauseWrites(renewal)).paused
        proxy.workers[2].dispatcher.gate.resume("restarted")  # worker 2 restarted: its pause is gone
        assert not (await stub.PauseWrites(renewal)).paused
        await stub.PauseWrites(admin_pb2.PauseWritesRequest(paused=False, reason="done"))
        assert [w.dispatcher.gate.paused for w in proxy.workers] == [None, None, None]


async def test_a_pause_a_worker_cannot_take_is_undone_everywhere_and_names_that_worker(proxy: Proxy) -> None:
    """A pause that fails on one worker answers UNAVAILABLE naming it and leaves no worker paused."""
    dead = closed_port()
    proxy.peers.append((3, dead))
    stub, channel = await admin(proxy)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.PauseWrites(admin_pb2.PauseWritesRequest(paused=True, reason="cutover", lease_seconds=30))
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"worker 3 at {dead}" in (failed.value.details() or "")
    assert "the pause was undone" in (failed.value.details() or "")
    assert [w.dispatcher.gate.paused for w in proxy.workers] == [None, None, None]
    assert [w.dispatcher.gate.leased for w in proxy.workers] == [False, False, False]


async def test_a_change_a_worker_misses_is_unavailable_naming_it(proxy: Proxy) -> None:
    """An override that a dead worker cannot take: UNAVAILABLE naming it and where the override holds."""
    dead = closed_port()
    proxy.peers[1] = (2, dead)
    stub, channel = await admin(proxy)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.SetOverride(admin_pb2.SetOverrideRequest(route="old", reason="test"))
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    details = failed.value.details() or ""
    assert f"worker 2 at {dead}" in details
    assert "holds on worker(s) 0, 1" in details


async def test_status_sums_the_workers_and_lists_each_one_the_unreachable_too(proxy: Proxy) -> None:
    """Status adds up operations and replication over the workers and lists them, a dead one as unreachable."""
    for worker, writes in zip(proxy.workers, (1, 2, 3), strict=True):
        for n in range(writes):
            await worker.dispatcher.set(f"w{worker.index}:{n}", b'{"n": 1}', Call())
        await worker.dispatcher.get("w0:0", Call())
    dead = closed_port()
    proxy.peers.append((3, dead))
    stub, channel = await admin(proxy)
    async with channel:
        status = await stub.Status(admin_pb2.StatusRequest())
    assert status.replication.depth == 1 + 2 + 3
    shadow = json.loads(status.shadow_json)
    assert shadow["operations"] == {"set": {"old": 6}, "get": {"old": 3}}
    assert shadow["latency"]["old"]["set"]["count"] == 6
    assert [(w.index, w.reachable) for w in status.workers] == [(0, True), (1, True), (2, True), (3, False)]
    assert [w.operations for w in status.workers[:3]] == [2, 3, 4]
    assert [w.replication_depth for w in status.workers[:3]] == [1, 2, 3]
    assert all(w.pid and w.serving and w.flags_revision == "r1" for w in status.workers[:3])
    assert [w.admin_address for w in status.workers] == ["", *(w.address for w in proxy.workers[1:]), dead]
    assert status.workers[3].error
    assert all(b.healthy for b in status.backends)


async def test_turnout_status_prints_every_worker(proxy: Proxy, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout status` shows a line per worker, and --json the same list."""
    proxy.peers.append((3, closed_port()))
    config = write_config(tmp_path / "cli", old={"type": "memory"}, new={"type": "memory"})
    (tmp_path / "cli" / "state").mkdir()
    (tmp_path / "cli" / "state" / "admin.address").write_text(proxy.zero.address + "\n")
    assert await asyncio.to_thread(main, ["status", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^worker 0: pid \d+, serving, 0 operations", text, re.M)
    assert re.search(rf"^worker 2 at {proxy.workers[2].address}: pid \d+, serving", text, re.M)
    assert re.search(r"^worker 3 at 127.0.0.1:\d+: UNREACHABLE: ", text, re.M)
    assert await asyncio.to_thread(main, ["status", "--json", "--config", str(config)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(w["index"], w["reachable"]) for w in doc["workers"]] == [(0, True), (1, True), (2, True), (3, False)]


async def test_drain_waits_for_every_worker_and_a_rollback_is_recorded_once(proxy: Proxy) -> None:
    """Drain answers the replication of all workers once drained; a rollback is recorded by worker 0
    alone (one span per rollback), and its status says so for the proxy."""
    for worker in proxy.workers:
        await worker.dispatcher.set(f"w{worker.index}", b"1", Call())
        worker.queue.start()
    stub, channel = await admin(proxy)
    async with channel:
        state = await stub.Drain(admin_pb2.DrainRequest(timeout_seconds=10))
        assert (state.depth, state.replayed) == (0, 3)
        await stub.RecordRollback(admin_pb2.RollbackRecord(reason="test", ok=True))
        status = await stub.Status(admin_pb2.StatusRequest())
    assert status.last_rollback.reason == "test"
    assert proxy.zero.state.last_rollback is not None
    assert all(w.state.last_rollback is None for w in proxy.workers[1:])


async def test_a_worker_other_than_0_never_relays(proxy: Proxy) -> None:
    """Even handed peers, a worker other than 0 acts alone and lists only itself."""
    proxy.workers[1].state.peers = lambda: [(0, proxy.zero.address), (2, proxy.workers[2].address)]
    async with grpc.aio.insecure_channel(proxy.workers[1].address) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        await stub.SetOverride(admin_pb2.SetOverrideRequest(route="new"))
        status = await stub.Status(admin_pb2.StatusRequest())
    assert [w.state.watcher.override is not None for w in proxy.workers] == [False, True, False]
    assert [w.index for w in status.workers] == [1]


async def test_a_single_process_status_lists_no_workers(proxy: Proxy) -> None:
    """With no other workers Status is what it always was: no workers list."""
    proxy.peers.clear()
    stub, channel = await admin(proxy)
    async with channel:
        status = await stub.Status(admin_pb2.StatusRequest())
    assert list(status.workers) == []


# --- /metrics ----------------------------------------------------------------------------------

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\n"])*)"')
_SUFFIXES = {"counter": ("",), "gauge": ("",), "untyped": ("",), "summary": ("", "_sum", "_count"),
             "histogram": ("_bucket", "_sum", "_count")}


@dataclass
class Family:
    kind: str = "untyped"
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _labels(body: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        match = _LABEL.match(body, pos)
        assert match, f"bad label at {body[pos:]!r}"
        assert match.group(1) not in labels, f"label {match.group(1)} twice"
        labels[match.group(1)] = match.group(2)
        pos = match.end()
        if pos < len(body):
            assert body[pos] == ",", f"bad label separator in {body!r}"
            assert pos + 1 < len(body), f"a trailing comma in {body!r}"
            pos += 1
    return labels


def parse_exposition(text: str) -> dict[str, Family]:
    """A strict reader of the Prometheus text format: each family's HELP and TYPE at most once and
    before its samples, a family's samples together, no series twice, every value a number."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    current: str | None = None
    series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()

    def enter(name: str) -> Family:
        nonlocal current
        if name != current:
            assert name not in families, f"family {name} is split"
            families[name] = Family()
            current = name
        return families[name]

    for line in text[:-1].split("\n"):
        assert line, "an empty line"
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            name, _, rest = line[7:].partition(" ")
            assert _NAME.fullmatch(name), line
            family = enter(name)
            assert not family.samples, f"{line!r} after samples"
            if line.startswith("# HELP "):
                assert family.help is None, f"HELP twice for {name}"
                family.help = rest
            else:
                assert family.kind == "untyped", f"TYPE twice for {name}"
                assert rest in _SUFFIXES, line
                family.kind = rest
            continue
        assert not line.startswith("#"), line
        match = _SAMPLE.fullmatch(line)
        assert match, f"bad sample {line!r}"
        name, body, value = match.groups()
        assert current is not None
        owner = next((current for suffix in _SUFFIXES[families[current].kind] if name == current + suffix), name)
        family = families[owner] if owner == current else enter(owner)
        labels = _labels(body or "")
        key = (name, tuple(sorted(labels.items())))
        assert key not in series, f"series twice: {line!r}"
        series.add(key)
        number = float(value)
        assert not math.isnan(number) or value == "NaN"
        family.samples.append((name, labels, number))
    return families


async def page(address: str, path: str) -> str:
    """The body of a 200 answer to GET path from an HTTP side."""
    async with aiohttp.ClientSession() as session, session.get(f"http://{address}{path}") as reply:
        assert reply.status == 200, await reply.text()
        return await reply.text()


async def test_metrics_of_every_worker_are_one_valid_page_labelled_by_worker(proxy: Proxy) -> None:
    """Worker 0's /metrics holds every worker's samples, each family once, each sample with its worker."""
    for worker in proxy.workers:
        await worker.dispatcher.set("k", b"1", Call())
    dead = closed_port()
    proxy.peers.append((3, dead))
    proxy.http_peers.append((3, dead))
    text = await page(proxy.zero.http_address, "/metrics")
    assert text.count("# TYPE turnout_operations_total ") == 1
    families = parse_exposition(text)
    operations = families["turnout_operations_total"]
    assert operations.kind == "counter"
    assert sorted(labels["worker"] for _, labels, _ in operations.samples) == ["0", "1", "2"]
    assert all("worker" in labels for family in families.values() for _, labels, _ in family.samples)
    latency = families["turnout_backend_latency_seconds"]
    assert latency.kind == "summary"
    assert {name for name, _, _ in latency.samples} == {"turnout_backend_latency_seconds",
                                                         "turnout_backend_latency_seconds_sum",
                                                         "turnout_backend_latency_seconds_count"}
    up = {labels["worker"]: value for _, labels, value in families["turnout_worker_up"].samples}
    assert up == {"0": 1, "1": 1, "2": 1, "3": 0}


async def test_every_family_of_a_worker_appears_once_on_worker_0_with_the_same_type(proxy: Proxy) -> None:
    """The families of worker 0's page are exactly a lone worker's and turnout_worker_up, each of one type."""
    alone = {f.name: f.type for f in text_string_to_metric_families(await page(proxy.workers[1].http_address,
                                                                               "/metrics"))}
    merged = list(text_string_to_metric_families(await page(proxy.zero.http_address, "/metrics")))
    assert len({f.name for f in merged}) == len(merged)
    assert {f.name: f.type for f in merged} == {**alone, "turnout_worker_up": "gauge"}


async def test_a_worker_that_has_not_published_its_address_is_shown_down(proxy: Proxy) -> None:
    """A worker still starting (no HTTP address yet) is left out of the page and shown by turnout_worker_up."""
    proxy.http_peers[1] = (2, "")
    families = parse_exposition(await page(proxy.zero.http_address, "/metrics"))
    up = {labels["worker"]: value for _, labels, value in families["turnout_worker_up"].samples}
    assert up == {"0": 1, "1": 1, "2": 0}
    assert sorted(labels["worker"] for _, labels, _ in families["turnout_flags_info"].samples) == ["0", "1"]


async def test_metrics_of_a_single_process_stay_unlabelled(proxy: Proxy) -> None:
    """Without other workers /metrics is what it always was: no worker label, no turnout_worker_up."""
    proxy.peers.clear()
    proxy.http_peers.clear()
    families = parse_exposition(await page(proxy.zero.http_address, "/metrics"))
    assert "turnout_worker_up" not in families
    assert not any("worker" in labels for family in families.values() for _, labels, _ in family.samples)


def test_merging_pages_labels_bare_and_labelled_samples_and_keeps_the_first_help() -> None:
    """Samples with no labels, with labels and with suffixes each get the worker label; each family is
    shown once, with the first worker's help."""
    one = '# HELP a_total A.\n# TYPE a_total counter\na_total 1\n# TYPE s summary\ns{q="0.5"} 2\ns_sum 3\ns_count 1\n'
    two = '# HELP a_total Another.\n# TYPE a_total counter\na_total 4\n# TYPE b gauge\nb{x="}"} 5\n'
    families = label_by_worker([(0, text_string_to_metric_families(one)), (1, text_string_to_metric_families(two))])
    merged = generate_latest(Families(families)).decode()
    assert merged == ('# HELP a_total A.\n# TYPE a_total counter\na_total{worker="0"} 1.0\na_total{worker="1"} 4.0\n'
                      '# HELP s \n# TYPE s summary\ns{q="0.5",worker="0"} 2.0\ns_sum{worker="0"} 3.0\n'
                      's_count{worker="0"} 1.0\n'
                      '# HELP b \n# TYPE b gauge\nb{worker="1",x="}"} 5.0\n')
    parse_exposition(merged)


async def test_a_worker_that_hangs_is_given_up_at_the_deadline() -> None:
    """A worker that takes the connection and never answers fails the fetch at its deadline."""
    hung_up = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # never answers; returns once the client gives up and closes
        finally:
            writer.close()
            await writer.wait_closed()
            hung_up.set()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    async with server:
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        with pytest.raises(TimeoutError):
            await fetch_metrics(address, timeout=0.2)
        await asyncio.wait_for(hung_up.wait(), 5)  # and the connection it gave up on is closed
