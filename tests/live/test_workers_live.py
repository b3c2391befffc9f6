"""`turnout serve --workers N` against real processes: one port, shared stores, restarts, clean stops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc import aio
from turnout import AsyncClient, SyncClient, TurnoutError

from tests.support.proxy_process import ProxyProcess, get_page, http_address, write_config
from tests.support.stores import sqlite_contents

SQLITE_PAIR = ({"type": "sqlite", "path": "old.sqlite"}, {"type": "sqlite", "path": "new.sqlite"})
MOVING = "use_new_storage: true\ntraffic_percentage: {read: 30, write: 60}\n"


def proxy(tmp_path: Path, flags: str, workers: int = 2, old: dict[str, str] = SQLITE_PAIR[0],
          new: dict[str, str] = SQLITE_PAIR[1]) -> ProxyProcess:
    config = write_config(tmp_path, old, new)
    (tmp_path / "flags.yaml").write_text(flags)
    return ProxyProcess(config, args=["--workers", str(workers)])


def operations_of(tmp_path: Path, index: int) -> int:
    """KeyValue operations worker `index` served, from its own /metrics."""
    text = get_page(http_address(tmp_path / "state", index), "/metrics")
    samples = [line for line in text.splitlines() if line.startswith("turnout_operations_total{")]
    # Worker 0 speaks for all: its samples carry a worker label once it merges the others'.
    mine = [line for line in samples if 'worker="' not in line or f'worker="{index}"' in line]
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in mine)


def children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


async def write_through_many_connections(target: str, connections: int, rounds: int) -> dict[str, set[str]]:
    """Every connection writes the same shared keys and its own; returns each key's written values."""
    written: dict[str, set[str]] = {}

    async def one(connection: int) -> None:
        # A channel of its own, not the process's shared connection: the kernel spreads connections.
        channel = aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        async with AsyncClient(target, channel=channel) as kv:
            for round_ in range(rounds):
                for key in (f"shared:{round_ % 10}", f"own:{connection}:{round_}"):
                    value = {"connection": connection, "round": round_}
                    written.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
                    await kv.set(key, value)
                await kv.get(f"shared:{round_ % 10}")
        await channel.close()

    await asyncio.gather(*(one(c) for c in range(connections)))
    return written


def test_workers_share_one_port_and_leave_both_stores_equal(tmp_path: Path) -> None:
    """Writes spread over two workers, the same keys from every connection at once: after the
    drain both stores hold the same thing, each key one of the values written to it."""
    with proxy(tmp_path, MOVING) as running:
        written = asyncio.run(write_through_many_connections(running.target, connections=16, rounds=30))
        served = [operations_of(tmp_path, index) for index in (0, 1)]
        assert all(count > 0 for count in served), served
        assert sum(served) == 16 * 30 * 3
        assert running.stop() == 0
    old, new = sqlite_contents(tmp_path / "old.sqlite"), sqlite_contents(tmp_path / "new.sqlite")
    assert old == new
    assert set(old) == set(written)
    for key, value in old.items():
        assert json.dumps(value, sort_keys=True) in written[key]


def test_shadow_mode_over_workers_finds_no_discrepancy_in_writes(tmp_path: Path) -> None:
    flags = "use_new_storage: true\nshadow_mode_enabled: true\ntraffic_percentage: {read: 50, write: 50}\n"
    with proxy(tmp_path, flags) as running:
        asyncio.run(write_through_many_connections(running.target, connections=8, rounds=20))
        assert running.stop() == 0
    assert sqlite_contents(tmp_path / "old.sqlite") == sqlite_contents(tmp_path / "new.sqlite")


def test_workers_over_jsondir_folders(tmp_path: Path) -> None:
    old = {"type": "jsondir", "path": "old"}
    with proxy(tmp_path, MOVING, old=old) as running:
        asyncio.run(write_through_many_connections(running.target, connections=6, rounds=10))
        client = SyncClient(running.target, timeout=5)
        assert sorted(client.keys("own:0:")) == sorted(f"own:0:{r}" for r in range(10))
        assert running.stop() == 0
    files = {p.name for p in (tmp_path / "old").glob("*.json")}
    assert len(files) == 10 + 6 * 10


def test_a_store_only_one_process_can_serve_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"type": "jsonfile", "path": "legacy.json"}, SQLITE_PAIR[1])
    result = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--workers", "2"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "backends.old is a jsonfile store" in result.stderr
    assert not (tmp_path / "state").exists() or not (tmp_path / "state" / "listen.address").exists()


def test_a_second_proxy_on_the_same_stores_is_refused(tmp_path: Path) -> None:
    with proxy(tmp_path, MOVING):
        lone = ProxyProcess(tmp_path / "turnout.yaml")
        with pytest.raises(RuntimeError, match="locked by another turnout process"):
            lone.start()


def test_a_dead_worker_is_replaced_and_a_dead_supervisor_takes_its_workers_along(tmp_path: Path) -> None:
    with proxy(tmp_path, MOVING) as running:
        assert running.process is not None
        supervisor = running.process.pid
        wait_for(lambda: len(children(supervisor)) == 2)
        first = children(supervisor)
        victim = max(first)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(children(supervisor)) == 2 and victim not in children(supervisor))
        replacement = (children(supervisor) - first).pop()
        # The new worker serves: it writes its ready line once its backends are open.
        wait_for(lambda: "worker" in "".join(running.output) and any(
            f"(pid {replacement})" in line for line in running.output))
        client = SyncClient(running.target, timeout=5)
        client.set("after-restart", {"ok": True})
        assert client.get("after-restart") == {"ok": True}

        workers = children(supervisor)
        running.kill()
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))
    # Every lock went with them: a lone proxy opens the same stores.
    with ProxyProcess(tmp_path / "turnout.yaml") as lone:
        assert SyncClient(lone.target, timeout=5).get("after-restart") == {"ok": True}


def test_operators_steer_every_worker_through_worker_0(tmp_path: Path) -> None:
    """`turnout rollback` and `turnout cutover` reach every worker: after each, calls on every
    connection take the route it set, and status lists both workers."""
    from proxy.cli import main

    cli = ["--config", str(tmp_path / "turnout.yaml")]
    flags = "use_new_storage: true\ntraffic_percentage: {read: 50, write: 50}\n"

    def routes_per_worker() -> dict[int, dict[str, int]]:
        routes: dict[int, dict[str, int]] = {}
        for line in get_page(http_address(tmp_path / "state"), "/metrics").splitlines():
            if line.startswith("turnout_operations_total{"):
                labels = dict(part.split("=") for part in line[line.index("{") + 1:line.index("}")].split(","))
                worker, route = int(labels["worker"].strip('"')), labels["route"].strip('"')
                routes.setdefault(worker, {}).setdefault(route, 0)
                routes[worker][route] += int(float(line.rsplit(" ", 1)[1]))
        return routes

    with proxy(tmp_path, flags) as running:
        # 16 connections: all on one of the two workers one time in 32,768.
        before = routes_per_worker()
        assert main(["rollback", "--reason", "drill", *cli]) == 0
        asyncio.run(write_through_many_connections(running.target, connections=16, rounds=5))
        after = routes_per_worker()
        for worker in (0, 1):
            assert after[worker].get("new", 0) == before.get(worker, {}).get("new", 0), after
            assert after[worker]["old"] > before.get(worker, {}).get("old", 0), after
        assert main(["resume", *cli]) == 0
        assert main(["verify", *cli]) == 0
        assert main(["cutover", "--monitor", "0.5", *cli]) == 0
        settled = routes_per_worker()
        asyncio.run(write_through_many_connections(running.target, connections=16, rounds=5))
        final = routes_per_worker()
        for worker in (0, 1):
            assert final[worker]["old"] == settled[worker]["old"], final
            assert final[worker]["new"] > settled[worker].get("new", 0), final
        assert main(["status", "--json", *cli]) == 0


async def test_a_worker_killed_mid_write_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """SIGKILL one of two workers while eight connections write split traffic (writes replicate
    through the shared queue); the writers go on through the survivor and the replacement. After a
    clean stop both stores agree and hold every key's last acknowledged write."""
    running = proxy(tmp_path, "use_new_storage: true\ntraffic_percentage: {read: 50, write: 50}\n").start()
    acknowledged: dict[str, object] = {}
    uncertain: dict[str, list[object]] = {}  # a write that failed may still have landed
    done = asyncio.Event()
    count, milestone, reached = [0], [300], asyncio.Event()

    async def writer(n: int) -> None:
        channel = aio.insecure_channel(running.target, options=[("grpc.use_local_subchannel_pool", 1)])
        async with AsyncClient(running.target, channel=channel, timeout=2) as kv:
            i = 0
            while not done.is_set():
                # A key of its own per write: only the queue brings it to the other store.
                key, value = f"w{n}:{i}", {"writer": n, "i": i}
                try:
                    await kv.set(key, value)
                except TurnoutError:
                    uncertain.setdefault(key, []).append(value)
                else:
                    acknowledged[key] = value
                    uncertain.pop(key, None)
                    count[0] += 1
                    if count[0] >= milestone[0]:
                        reached.set()
                i += 1
        await channel.close()

    try:
        assert running.process is not None
        supervisor = running.process.pid
        writers = [asyncio.create_task(writer(n)) for n in range(8)]
        await asyncio.wait_for(reached.wait(), 60)
        victim = max(children(supervisor))
        os.kill(victim, signal.SIGKILL)
        killed_output = len(running.output)
        reached.clear()
        milestone[0] = count[0] + 600
        await asyncio.wait_for(reached.wait(), 60)
        done.set()
        await asyncio.wait_for(asyncio.gather(*writers), 30)
        assert victim not in children(supervisor)
        await asyncio.to_thread(wait_for, lambda: any(
            "serving" in line and f"(pid {victim})" not in line for line in running.output[killed_output:]))
        # The kill did catch writes on their way between the stores (else this test proves little):
        # the replacement found them in the queue.
        assert any("left in the replication queue" in line for line in running.output[killed_output:])
    finally:
        assert running.stop() == 0
    old, new = sqlite_contents(tmp_path / "old.sqlite"), sqlite_contents(tmp_path / "new.sqlite")
    assert old == new
    for key, value in acknowledged.items():
        assert old.get(key) in [value, *uncertain.get(key, [])], key


@pytest.mark.parametrize("field", ["listen", "http"])
def test_an_admin_port_in_use_stops_every_worker_with_status_2(tmp_path: Path, field: str) -> None:
    """Worker 0 cannot listen on admin.listen (or admin.http): the supervisor stops the others and
    exits 2, naming the field."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        admin = {"listen": "127.0.0.1:0", "http": "127.0.0.1:0", field: address}
        config = write_config(tmp_path, *SQLITE_PAIR, admin=admin)
        result = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config),
                                 "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"turnout: admin.{field}: cannot listen on {address}" in result.stderr
    assert "turnout: serving on" not in result.stderr
    assert "never retrieved" not in result.stderr
    assert "Traceback" not in result.stderr
