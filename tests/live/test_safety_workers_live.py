"""The safety automation over `turnout serve --workers 2`: one guard (in worker 0) judges the sum of
both workers' counters, walks a canary whose step every worker routes by, and an operator's abort
and resume reach every worker.

Real processes, real SQLite stores; traffic on many connections of their own, so the kernel spreads
them over both workers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc import aio
from turnout import AsyncClient, RetryPolicy
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy.routing.router import bucket
from tests.live.test_safety_live import SQLITE_PAIR, Traffic, flags_file, status, wait_for
from tests.support.proxy_process import ProxyProcess, admin_address, get_page, http_address, write_config
from tests.support.writers import turnout

T = TypeVar("T")
CONNECTIONS = 12
CANARY = ("use_new_storage: true\nshadow_mode_enabled: true\n"
          "rollback_triggers: {{error_rate: 0.01, window: {window}, min_calls: 20}}\n"
          "canary: {{steps: [10, 100], interval: 2s}}\n")


def keys_above(percentage: float, count: int, prefix: str) -> list[str]:
    """Keys whose bucket lies at or above percentage (no salt): new serves them only at a larger step."""
    found = [key for key in (f"{prefix}:{n}" for n in range(count * 20)) if bucket(key, "") >= percentage * 100]
    return found[:count]


def keys_below(percentage: float, count: int, prefix: str) -> list[str]:
    found = [key for key in (f"{prefix}:{n}" for n in range(count * 200)) if bucket(key, "") < percentage * 100]
    return found[:count]


def routes_per_worker(state_dir: Path) -> dict[int, dict[str, int]]:
    """KeyValue operations each worker served, by the route that served them (the primary's), from
    worker 0's /metrics, which carries every worker's samples with a worker label."""
    routes: dict[int, dict[str, int]] = {0: {}, 1: {}}
    for line in get_page(http_address(state_dir), "/metrics").splitlines():
        if line.startswith("turnout_operations_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(","))
            worker, route = int(labels["worker"].strip('"')), labels["route"].strip('"')
            routes.setdefault(worker, {}).setdefault(route, 0)
            routes[worker][route] += int(float(line.rsplit(" ", 1)[1]))
    return routes


def spread_traffic(target: str, keys: list[str],
                   connections: int = CONNECTIONS) -> list[tuple[Traffic, aio.Channel]]:
    """One Traffic per connection of its own (not the process's shared one: the kernel spreads
    connections over the workers), each over its own slice of keys."""
    channels = [own_channel(target) for _ in range(connections)]
    return [(Traffic(AsyncClient(target, channel=channel, timeout=5, retry=RetryPolicy(attempts=1)),
                     keys[c::connections]), channel) for c, channel in enumerate(channels)]


def own_channel(target: str) -> aio.Channel:
    return aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


async def run_for(traffics: list[tuple[Traffic, aio.Channel]], until: Awaitable[T]) -> T:
    """Run the traffic until `until` gives its answer; then stop it and close its connections."""
    tasks = [asyncio.create_task(t.run()) for t, _ in traffics]
    try:
        return await until
    finally:
        for t, _ in traffics:
            t.stop.set()
        await asyncio.gather(*tasks)
        for _, channel in traffics:
            await channel.close()


async def burst(target: str, keys: list[str], rounds: int, connections: int = CONNECTIONS) -> int:
    """A known number of KeyValue calls (a set and a get of each key per round) over many connections."""

    async def one(connection: int) -> int:
        channel = own_channel(target)
        calls = 0
        async with AsyncClient(target, channel=channel, timeout=5, retry=RetryPolicy(attempts=1)) as kv:
            for round_ in range(rounds):
                for key in keys[connection::connections]:
                    await kv.set(key, {"round": round_})
                    assert await kv.get(key) == {"round": round_}
                    calls += 2
        await channel.close()
        return calls

    return sum(await asyncio.gather(*(one(c) for c in range(connections))))


def worker_override(state_dir: Path, worker: int) -> admin_pb2.OverrideState:
    """The override as worker `worker` itself has it, from its own admin port (not worker 0's merge)."""
    with grpc.insecure_channel(admin_address(state_dir, worker)) as channel:
        reply: admin_pb2.StatusResponse = admin_pb2_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest(),
                                                                                  timeout=10)
    return reply.override


def new_calls(state_dir: Path, worker: int) -> int:
    """The calls of new worker `worker` has counted since it started, from its own Counters RPC."""
    with grpc.insecure_channel(admin_address(state_dir, worker)) as channel:
        reply = admin_pb2_grpc.AdminStub(channel).Counters(admin_pb2.CountersRequest(), timeout=10)
    calls: dict[str, int] = json.loads(reply.counters_json)["calls"]
    return sum(n for pair, n in calls.items() if pair.startswith("new/"))


async def route_of(config: Path, key: str) -> dict[str, Any]:
    return await turnout(config, "route", key, "--op", "set")


@pytest.mark.slow
async def test_one_guard_walks_a_canary_over_both_workers_and_an_abort_reaches_every_worker(tmp_path: Path) -> None:
    """canary [10, 100], interval 2 s, shadow mode, probe keys whose bucket lies above 10 %: at step 0
    every worker serves them from old, the guard (summing both workers' counters, the shadow calls
    of new among them) advances to 100, and then every worker serves them from new and none from
    old. With a long window the guard's window counts exactly the calls of a known burst spread over
    both workers: it reads worker 1 too. `turnout canary abort` puts every worker on old (each
    worker's own admin Status says so); `turnout resume` clears it on every worker and the canary
    starts again at step 0, which every worker then routes by."""
    config = write_config(tmp_path, *SQLITE_PAIR)
    state_dir = tmp_path / "state"
    flags_file(tmp_path, CANARY.format(window="2s"))
    probes = keys_above(10, 120, "probe")
    (low,) = keys_below(10, 1, "low")
    with ProxyProcess(config, args=["--workers", "2"]) as proxy:
        async def evaluated() -> dict[str, Any] | None:
            doc = await status(config)
            return doc if doc["health"].get("evaluated_unix") else None

        first = await wait_for(evaluated, 20, "the guard's first evaluation")
        assert first["canary"]["step"] == 0
        assert [w["index"] for w in first["workers"]] == [0, 1]
        assert (await route_of(config, probes[0]))["route"] == "old"
        low_route = await route_of(config, low)
        assert (low_route["route"], low_route["reason"]) == ("new", "percentage")

        async def at_last_step() -> dict[str, Any] | None:
            doc = await status(config)
            return doc if doc["canary"]["step"] == 1 else None

        traffic = spread_traffic(proxy.target, probes)
        stepped = await run_for(traffic, until=wait_for(at_last_step, 40, "the canary's step to 100 %"))
        assert stepped["canary"]["percentage"] == 100
        assert stepped["flags"]["traffic_percentage"] == {"read": 100, "write": 100}
        assert all(not t.stale and not t.failures for t, _ in traffic)
        # Step 0 sent every probe key to old on both workers: the 10 % were other keys.
        at_step_0 = routes_per_worker(state_dir)
        assert at_step_0[0].get("old", 0) > 0, at_step_0
        assert at_step_0[1].get("old", 0) > 0, at_step_0
        routed = await route_of(config, probes[0])
        assert (routed["route"], routed["reason"]) == ("new", "percentage")

        # At 100 % both workers serve the probe keys from new, none from old.
        calls = await burst(proxy.target, probes, rounds=3)
        at_step_1 = routes_per_worker(state_dir)
        for worker in (0, 1):
            assert at_step_1[worker].get("old", 0) == at_step_0[worker].get("old", 0), (at_step_0, at_step_1)
            assert at_step_1[worker].get("new", 0) > at_step_0[worker].get("new", 0), (at_step_0, at_step_1)
        assert sum(at_step_1[w].get("new", 0) - at_step_0[w].get("new", 0) for w in (0, 1)) == calls

        # An operator's abort: every worker on old, by its own account.
        aborted = await turnout(config, "canary", "abort", "--reason", "drill")
        assert aborted["state"] == "rolled_back"
        for worker in (0, 1):
            override = worker_override(state_dir, worker)
            assert (override.active, override.route) == (True, "old"), (worker, override)
            assert "drill" in override.reason
        doc = await status(config)
        assert doc["override"]["active"]
        assert doc["canary"]["state"] == "rolled_back"
        before = routes_per_worker(state_dir)
        await burst(proxy.target, probes, rounds=1)
        after = routes_per_worker(state_dir)
        for worker in (0, 1):
            assert after[worker].get("new", 0) == before[worker].get("new", 0), (before, after)
        assert sum(after[w].get("old", 0) - before[w].get("old", 0) for w in (0, 1)) > 0

        # The guard's window is the sum over the workers. A long window, cut at the resume: it then
        # holds a quiet reading from the resume on, and across a burst spread over both workers it
        # counts exactly what the two workers' own counters (each asked on its own admin port) grew by.
        flags_file(tmp_path, CANARY.format(window="10m"))

        async def long_window() -> dict[str, Any] | None:
            doc = await status(config)
            return doc if doc["flags"]["rollback_triggers"]["window"] == "10m" else None

        await wait_for(long_window, 20, "the flag file's long window")
        # Resume: cleared everywhere, the canary from step 0 again, and every worker routes by it.
        await turnout(config, "resume")
        for worker in (0, 1):
            assert not worker_override(state_dir, worker).active, worker

        async def restarted() -> dict[str, Any] | None:
            doc = await status(config)
            return doc if doc["canary"]["state"] != "rolled_back" else None

        again = await wait_for(restarted, 10, "the canary to start again")
        await turnout(config, "canary", "hold", "--reason", "the last look")  # step 0 stays while we look
        await asyncio.sleep(1.5)  # a quiet reading after the resume
        quiet = [new_calls(state_dir, w) for w in (0, 1)]
        await burst(proxy.target, probes, rounds=2)
        await asyncio.sleep(2.5)  # the shadow calls counted, and a reading after the burst
        grew = [new_calls(state_dir, w) - quiet[w] for w in (0, 1)]
        assert all(n > 0 for n in grew), grew
        window = (await status(config))["health"]["window"]["backends"]
        assert window["new"]["all"]["calls"] == sum(grew), (grew, window)
        assert window["new"]["all"]["calls"] > max(grew)
        assert again["canary"]["step"] == 0
        assert again["flags"]["traffic_percentage"] == {"read": 10, "write": 10}
        assert (await route_of(config, probes[0]))["route"] == "old"
        before = routes_per_worker(state_dir)
        await burst(proxy.target, probes[:24], rounds=1)
        after = routes_per_worker(state_dir)
        for worker in (0, 1):
            assert after[worker].get("new", 0) == before[worker].get("new", 0), (before, after)
