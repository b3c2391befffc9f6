"""The HTTP side (`admin.http`) of a real `turnout serve`: there only when configured, healthy only once
the backends are open, a port in use stopping start-up, today's families on /metrics, and under
`--workers N` every worker's families on worker 0's page, each once, labelled by worker."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from turnout import SyncClient

from proxy.config import load_config
from proxy.statedir import HTTP_ADDRESS_FILE, worker_dir
from tests.support.metric_families import GUARD, OPEN, RECORDS, WORKER_UP, Shape, by_worker, shape
from tests.support.proxy_process import ProxyProcess, admin_address, get_page, http_address, write_config
from tests.support.slow_start import new_backend_held_open

SQLITE_PAIR = ({"type": "sqlite", "path": "old.sqlite"}, {"type": "sqlite", "path": "new.sqlite"})


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process pid listens on, from its socket descriptors and the kernel's socket tables."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def kinds(families: Shape) -> dict[str, str]:
    return {name: kind for name, (kind, _) in families.items()}


def labelled(families: Shape, page: str) -> Shape:
    """The families of `families` that hold a sample on page (a family without one shows no labels)."""
    held = {f"{f.name}_total" if f.type == "counter" else f.name
            for f in text_string_to_metric_families(page) if f.samples}
    return {name: value for name, value in families.items() if name in held}


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_http_side_listens_on_its_own_port_beside_the_admin_api(tmp_path: Path) -> None:
    """With admin.http the proxy listens on exactly three ports (KeyValue, admin API, HTTP side), says
    where, and the HTTP side answers."""
    config = write_config(tmp_path, old={"type": "memory"}, new={"type": "memory"})
    with ProxyProcess(config) as running:
        assert running.process is not None
        state = tmp_path / "state"
        http, admin = http_address(state), admin_address(state)
        assert listening_ports(running.process.pid) == {port_of(running.target), port_of(admin), port_of(http)}
        assert any(f"admin on {admin}, http on {http}" in line for line in running.output)
        assert json.loads(get_page(http, "/healthz")) == {"status": "serving"}


def test_without_admin_http_there_is_no_http_side(tmp_path: Path) -> None:
    """A config without admin.http listens on the KeyValue and admin ports only, and leaves no
    http.address (not even one a previous run wrote)."""
    config = write_config(tmp_path, old={"type": "memory"}, new={"type": "memory"}, admin={"listen": "127.0.0.1:0"})
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / HTTP_ADDRESS_FILE).write_text("127.0.0.1:1\n")  # a previous run's
    with ProxyProcess(config) as running:
        assert running.process is not None
        assert listening_ports(running.process.pid) == {port_of(running.target),
                                                        port_of(admin_address(tmp_path / "state"))}
        assert not (tmp_path / "state" / HTTP_ADDRESS_FILE).exists()
        assert not any("http on" in line for line in running.output)


async def test_healthz_is_503_until_both_backends_are_open_then_200(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a backend is still opening, the HTTP side already answers: /healthz 503 and /metrics with
    the flag families; once both are open and the proxy serves, /healthz is 200."""
    config = load_config(write_config(tmp_path, old={"type": "memory"}, new={"type": "memory"}))
    address = config.state_dir / HTTP_ADDRESS_FILE
    async with new_backend_held_open(config, monkeypatch) as start, aiohttp.ClientSession() as session:
        for _ in range(400):
            if address.exists():
                break
            assert not start.task.done(), start.task.result()  # start-up failed: say why
            await asyncio.sleep(0.05)
        base = f"http://{address.read_text().strip()}"
        async with session.get(f"{base}/healthz") as reply:
            assert (reply.status, (await reply.json())["status"]) == (503, "starting")
        async with session.get(f"{base}/metrics") as reply:
            assert reply.status == 200
            assert kinds(shape(await reply.text())) == {"turnout_flags_info": "gauge",
                                                        "turnout_flags_reload_failures_total": "counter",
                                                        "turnout_override_active": "gauge",
                                                        "turnout_rollbacks_total": "counter",
                                                        "turnout_override_automatic": "gauge"}
        start.opened.set()
        for _ in range(400):
            async with session.get(f"{base}/healthz") as reply:
                health = (reply.status, await reply.json())
            if health[0] == 200:
                break
            await asyncio.sleep(0.05)
        assert health == (200, {"status": "serving"})


def test_metrics_of_a_running_proxy_are_todays_families(tmp_path: Path) -> None:
    """/metrics of a running proxy has today's family names and types, no more, no fewer, each
    labelled as today; `?records=1` adds the record families."""
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    (tmp_path / "flags.yaml").write_text("use_new_storage: true\nshadow_mode_enabled: true\n")
    with ProxyProcess(config) as running, SyncClient(running.target, timeout=5) as kv:
        kv.set("k", {"v": 1})
        kv.get("k")
        http = http_address(tmp_path / "state")
        page = get_page(http, "/metrics")
        families = shape(page)
        guarded = {**OPEN, **GUARD}  # a lone proxy runs the guard, whose health window is on its page
        assert kinds(families) == kinds(guarded)
        assert labelled(families, page) == labelled(guarded, page)
        assert families["turnout_operations_total"] == OPEN["turnout_operations_total"]
        counted = get_page(http, "/metrics?records=1")
        assert kinds(shape(counted)) == kinds({**guarded, **RECORDS})
        assert labelled(shape(counted), counted) == labelled({**guarded, **RECORDS}, counted)


def test_under_workers_each_family_appears_once_with_every_workers_samples(tmp_path: Path) -> None:
    """Worker 0's /metrics shows each family once, every sample labelled with its worker, both workers
    read (turnout_worker_up); worker 1 has an HTTP side of its own on loopback."""
    config = write_config(tmp_path, *SQLITE_PAIR)
    (tmp_path / "flags.yaml").write_text("use_new_storage: true\ntraffic_percentage: {read: 50, write: 50}\n")
    state = tmp_path / "state"
    with ProxyProcess(config, args=["--workers", "2"]):
        wait_for(lambda: (worker_dir(state, 1) / HTTP_ADDRESS_FILE).exists())
        own = get_page(http_address(state, 1), "/metrics")
        assert kinds(shape(own)) == kinds(OPEN)  # a worker's own page is unlabelled, like a lone proxy's
        assert not any("worker" in labels for _, labels in shape(own).values())
        page = get_page(http_address(state), "/metrics")
        families = shape(page)
        assert kinds(families) == kinds({**OPEN, **GUARD, **WORKER_UP})  # worker 0 runs the guard
        assert labelled(families, page) == labelled(by_worker({**OPEN, **GUARD, **WORKER_UP}), page)
        workers = {sample.labels["worker"] for family in text_string_to_metric_families(page)
                   for sample in family.samples}
        assert workers == {"0", "1"}
        (up,) = (f for f in text_string_to_metric_families(page) if f.name == "turnout_worker_up")
        assert {s.labels["worker"]: s.value for s in up.samples} == {"0": 1, "1": 1}
