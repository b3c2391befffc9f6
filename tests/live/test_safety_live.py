"""The plan's safety automation on a running proxy, decided by the proxy from measured figures: a new
store that fails trips `error_rate`, one that answers slowly trips `latency_increase`, a window with
too few calls trips nothing and holds the canary, a canary walks its steps and rolls back on a trip,
and `turnout checkpoint` says no-go until a figure is measured.

Real stores and servers throughout: SQLite files, the session's redis-server (stopped for the
outage), a KeyValue server on loopback made slow, hooks to a receiver on loopback.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from turnout import AsyncClient, RetryPolicy, TurnoutError

from proxy.config import BackendSpec
from tests.support.hook_receiver import HookReceiver
from tests.support.proxy_process import ProxyProcess, get_page, http_address, run_cli, write_config
from tests.support.servers import spec_document
from tests.support.servers.redis import RedisServer
from tests.support.slow_upstream import SlowUpstream
from tests.support.stores import sqlite_contents
from tests.support.writers import turnout

SQLITE_PAIR = ({"type": "sqlite", "path": "old.sqlite"}, {"type": "sqlite", "path": "new.sqlite"})


@dataclass
class Traffic:
    """One caller setting and reading back its own keys, one call after another, so each key's last
    acknowledged write is known and every read can be checked against it."""

    client: AsyncClient
    keys: list[str]
    pause_s: float = 0.0
    acknowledged: dict[str, Any] = field(default_factory=dict)
    uncertain: set[str] = field(default_factory=set)  # a failed write may or may not have landed
    stale: list[str] = field(default_factory=list)  # reads that missed an acknowledged write: must stay empty
    failures: list[tuple[float, str]] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)  # when each acknowledged write came back
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            key = self.keys[i % len(self.keys)]
            value = {"i": i}
            try:
                await self.client.set(key, value)
            except TurnoutError as exc:
                self.failures.append((time.time(), f"set {key}: {exc.code.name}"))
                self.uncertain.add(key)
            else:
                self.acknowledged[key] = value
                self.uncertain.discard(key)
                self.successes.append(time.time())
            await self._read_back(key)
            i += 1
            if self.pause_s:
                await asyncio.sleep(self.pause_s)
            elif i % 20 == 0:
                await asyncio.sleep(0)

    async def _read_back(self, key: str) -> None:
        try:
            got = await self.client.get(key)
        except TurnoutError as exc:
            self.failures.append((time.time(), f"get {key}: {exc.code.name}"))
            return
        if key in self.acknowledged and key not in self.uncertain and got != self.acknowledged[key]:
            self.stale.append(f"{key}: read {got!r}, last acknowledged {self.acknowledged[key]!r}")

    def held(self, contents: dict[str, Any]) -> None:
        """Every write acknowledged (and not followed by a failed one) is what the store holds."""
        missing = {k: v for k, v in self.acknowledged.items() if k not in self.uncertain and contents.get(k) != v}
        assert not missing, f"acknowledged writes lost: {missing}"


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def status(config: Path) -> dict[str, Any]:
    return await turnout(config, "status")


def flags_file(folder: Path, text: str) -> None:
    (folder / "flags.yaml").write_text(text, encoding="utf-8")


def metric(page: str, line_start: str) -> float:
    """The value of the sample line starting with line_start (name and labels as exposed)."""
    for line in page.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start} on the page")


@pytest.mark.slow
async def test_a_failing_new_store_trips_error_rate_and_everything_goes_to_old(
        tmp_path: Path, redis_server: RedisServer, redis_spec: BackendSpec) -> None:
    """Writes and reads routed to new (Redis); Redis stops. The error_rate trigger sends everything to
    old within one evaluation period past the window, by itself: status names the trigger with its
    measured value and threshold, an incident holds the window's figures, the metric counts it.
    Writes succeed again on old; no read ever misses an acknowledged write; once Redis is back every
    acknowledged write is on old. `turnout resume` then holds: the figures that tripped it are gone."""
    config = write_config(tmp_path, old=SQLITE_PAIR[0], new=spec_document(redis_spec))
    window_s = 6
    flags_file(tmp_path, "use_new_storage: true\ntraffic_percentage: {read: 100, write: 100}\n"
                         f"rollback_triggers: {{error_rate: 0.01, window: {window_s}s, min_calls: 10}}\n")
    try:
        with ProxyProcess(config) as proxy:
            async with AsyncClient(proxy.target, timeout=3, retry=RetryPolicy(attempts=1)) as client:
                # Four callers, so that failing calls (each waits out the store's retries) still fill
                # the window with enough calls of new.
                callers = [Traffic(client, [f"order:{c}:{n:03}" for n in range(20)]) for c in range(4)]
                traffic = callers[0]
                tasks = [asyncio.create_task(caller.run()) for caller in callers]
                await asyncio.sleep(2.0)
                healthy = await status(config)
                assert not healthy["override"]["active"]
                evaluation = healthy["health"]["evaluation"]
                assert evaluation["conclusive"], evaluation
                assert evaluation["healthy"], evaluation
                assert all(caller.failures == [] for caller in callers)
                outage = time.time()
                redis_server.stop()

                async def rolled_back() -> dict[str, Any] | None:
                    doc = await status(config)
                    return doc if doc["override"]["active"] else None

                try:
                    tripped = await wait_for(rolled_back, 30, "the automatic rollback")
                except AssertionError:
                    last = await status(config)
                    raise AssertionError(f"no automatic rollback; health {last['health']}, backends "
                                         f"{last['backends']}, traffic failures {traffic.failures[-5:]}") from None
                override = tripped["override"]
                assert override["route"] == "old"
                assert override["automatic"] is True
                trigger = override["trigger"]
                assert trigger["name"] == "error_rate"
                assert trigger["threshold"] == 0.01
                assert trigger["measured"] > 0.01
                # Within one evaluation period (1 s) of the window holding enough failed calls; a
                # generous bound, to catch a rollback that waits for more than the window.
                assert override["since_unix"] - outage < window_s + 5
                # Writes succeed again on old. For a few seconds some wait for their key's lock: the
                # replayer's first tries to copy the failed writes' keys from the stopped Redis hold it,
                # until its backoff spaces them out.
                await asyncio.sleep(4.0)
                after = [t for caller in callers for t in caller.successes if t > override["since_unix"] + 0.5]
                assert len(after) > 10, f"writes did not succeed again on old: {traffic.failures[-10:]}"
                # The trip's figures in status, and an incident document holding the window's.
                await wait_for(lambda: _last_rollback(config), 40, "the rollback's record")
                record = (await status(config))["last_rollback"]
                assert record["automatic"] is True
                assert record["reason"].startswith("automatic rollback: error_rate")
                incident = json.loads(Path(record["incident"]).read_text())
                assert incident["trigger"]["name"] == "error_rate"
                assert incident["window"]["backends"]["new"]["all"]["errors"] > 0
                page = get_page(http_address(tmp_path / "state"), "/metrics")
                assert metric(page, 'turnout_rollbacks_total{automatic="true",trigger="error_rate"}') == 1
                assert metric(page, 'turnout_override_automatic{trigger="error_rate"}') == 1
                redis_server.start()

                async def caught_up() -> bool:
                    # The callers keep writing, so a copy or two is always on its way: caught up is the
                    # oldest of them young, not an empty queue.
                    replication = (await status(config))["replication"]
                    return bool(replication["oldest_age_seconds"] < 1.0)

                try:
                    await wait_for(caught_up, 60, "the queue to catch up with Redis")
                except AssertionError:
                    last = await status(config)
                    raise AssertionError(f"the queue did not catch up: {last['replication']}, backends "
                                         f"{last['backends']}") from None
                # Resumed with Redis healthy again: it holds, never re-tripped by what tripped it.
                await turnout(config, "resume")
                await asyncio.sleep(window_s + 2)
                resumed = await status(config)
                assert not resumed["override"]["active"], resumed["override"]
                for caller in callers:
                    caller.stop.set()
                await asyncio.gather(*tasks)

                async def drained() -> bool:
                    return bool((await status(config))["replication"]["depth"] == 0)

                await wait_for(drained, 60, "the queue to drain once the callers stopped")
        contents = sqlite_contents(tmp_path / "old.sqlite")
        for caller in callers:
            assert caller.stale == []
            caller.held(contents)
    finally:
        if not redis_server.node.running:
            redis_server.start()


async def _last_rollback(config: Path) -> bool:
    return bool((await status(config)).get("last_rollback", {}).get("time_unix"))


@pytest.mark.slow
async def test_a_slow_new_store_trips_latency_increase_but_not_below_min_calls(tmp_path: Path) -> None:
    """Shadow mode between two KeyValue upstreams, new's made 40 ms slow: with traffic below min_calls
    the window is inconclusive, nothing trips and the canary holds; at full traffic latency_increase
    trips, names the operation's p99s, and rolls the canary back."""
    old, new = await SlowUpstream().start(), await SlowUpstream().start()
    new.service.delay_s = 0.040
    try:
        config = write_config(tmp_path, old={"type": "grpc", "target": old.target},
                              new={"type": "grpc", "target": new.target})
        flags_file(tmp_path, "use_new_storage: true\nshadow_mode_enabled: true\n"
                             "rollback_triggers: {latency_increase: 0.5, window: 3s, min_calls: 40}\n"
                             "canary: {steps: [10, 50, 100], interval: 1s}\n")
        with ProxyProcess(config) as proxy:
            async with AsyncClient(proxy.target, timeout=5, retry=RetryPolicy(attempts=1)) as client:
                slow = Traffic(client, [f"cart:{n}" for n in range(5)], pause_s=0.4)  # ~5 calls/s of each store
                task = asyncio.create_task(slow.run())
                await asyncio.sleep(4.0)
                held = await status(config)
                assert not held["override"]["active"]
                evaluation = held["health"]["evaluation"]
                assert not evaluation["conclusive"]
                (latency,) = evaluation["triggers"]
                assert latency["verdict"] == "inconclusive"
                assert held["canary"]["state"] == "holding"
                assert held["canary"]["step"] == 0
                assert "inconclusive" in held["canary"]["reason"]
                slow.stop.set()
                await task
                fast = [Traffic(client, [f"cart:{w}:{n}" for n in range(5)]) for w in range(8)]
                tasks = [asyncio.create_task(t.run()) for t in fast]

                async def tripped() -> dict[str, Any] | None:
                    doc = await status(config)
                    return doc if doc["override"]["active"] else None

                doc = await wait_for(tripped, 30, "latency_increase to trip")
                for t in fast:
                    t.stop.set()
                await asyncio.gather(*tasks)
        trigger = doc["override"]["trigger"]
        assert trigger["name"] == "latency_increase"
        assert trigger["measured"] > 0.5
        assert "p99 new" in trigger["detail"]
        assert doc["canary"]["state"] == "rolled_back"
        assert all(not t.stale for t in [slow, *fast])
    finally:
        await old.stop()
        await new.stop()


@pytest.mark.slow
async def test_a_canary_walks_its_steps_holds_without_traffic_and_rolls_back_on_a_trip(tmp_path: Path) -> None:
    """canary [10, 50, 100] with a 2 s interval on healthy SQLite stores in shadow mode: it walks up
    while traffic flows (each step a hook event), holds while the window is inconclusive, survives a
    restart, reaches 100 and done; then values made to differ in new trip discrepancy_rate and the
    canary is rolled_back. A confirm hook that answers 500 holds a step."""
    receiver = await HookReceiver().start()
    try:
        config = write_config(tmp_path, *SQLITE_PAIR, hooks=[
            {"on": ["canary_step", "rollback", "resume"], "url": receiver.url("/events")},
            {"on": ["confirm"], "url": receiver.url("/confirm")}])
        flags_file(tmp_path, "use_new_storage: true\nshadow_mode_enabled: true\n"
                             "rollback_triggers: {error_rate: 0.01, discrepancy_rate: 0.05, window: 2s, "
                             "min_calls: 30}\ncanary: {steps: [10, 50, 100], interval: 2s}\n")
        proxy = ProxyProcess(config).start()
        try:
            async with AsyncClient(proxy.target, timeout=5, retry=RetryPolicy(attempts=1)) as client:
                traffic = Traffic(client, [f"user:{n:03}" for n in range(100)])
                task = asyncio.create_task(traffic.run())

                async def at_step(step: int) -> dict[str, Any] | None:
                    doc = await status(config)
                    return doc if doc["canary"]["step"] >= step else None

                doc = await wait_for(lambda: at_step(1), 30, "the canary's step 1")
                assert doc["canary"]["percentage"] == 50
                assert doc["flags"]["traffic_percentage"] == {"read": 50, "write": 50}
                traffic.stop.set()
                await task

                async def holding() -> dict[str, Any] | None:
                    doc = await status(config)
                    return doc if doc["canary"]["state"] == "holding" else None

                held = await wait_for(holding, 20, "the canary to hold without traffic")
                assert held["canary"]["step"] == 1
                assert "inconclusive" in held["canary"]["reason"]
        finally:
            proxy.stop()
        assert receiver.events("/events") == ["canary_step"]
        # The step survives a restart; traffic again, and it walks on to 100 and done.
        with ProxyProcess(config) as proxy:
            assert (await status(config))["canary"]["step"] == 1
            async with AsyncClient(proxy.target, timeout=5, retry=RetryPolicy(attempts=1)) as client:
                traffic = Traffic(client, [f"user:{n:03}" for n in range(100)])
                task = asyncio.create_task(traffic.run())

                async def done() -> dict[str, Any] | None:
                    doc = await status(config)
                    return doc if doc["canary"]["state"] == "done" else None

                finished = await wait_for(done, 40, "the canary to finish")
                assert finished["canary"]["percentage"] == 100
                assert finished["flags"]["traffic_percentage"] == {"read": 100, "write": 100}
                # Data corruption in new, behind the proxy's back: keys only read from now on hold
                # other values there than on old.
                readonly = [f"profile:{n:03}" for n in range(50)]
                for key in readonly:
                    await client.set(key, {"key": key})
                with sqlite3.connect(tmp_path / "new.sqlite") as db:
                    db.execute("UPDATE kv SET value = ? WHERE key LIKE 'profile:%'", (b'{"corrupted": true}',))

                async def read() -> None:
                    while not traffic.stop.is_set():
                        for key in readonly:
                            await client.get(key)

                reader = asyncio.create_task(read())

                async def rolled_back() -> dict[str, Any] | None:
                    doc = await status(config)
                    return doc if doc["override"]["active"] else None

                tripped = await wait_for(rolled_back, 30, "discrepancy_rate to trip")
                traffic.stop.set()
                await asyncio.gather(task, reader)
        assert tripped["override"]["trigger"]["name"] == "discrepancy_rate"
        assert tripped["canary"]["state"] == "rolled_back"
        assert receiver.events("/events") == ["canary_step", "canary_step", "canary_step", "rollback"]
        confirms = [r for r in receiver.received if r.path == "/confirm"]
        assert len(confirms) == 3
        assert all(r.body["event"] == "confirm" for r in confirms)
    finally:
        await receiver.close()


@pytest.mark.slow
async def test_a_confirm_hook_that_refuses_holds_the_step(tmp_path: Path) -> None:
    receiver = await HookReceiver().start()
    try:
        config = write_config(tmp_path, *SQLITE_PAIR, hooks=[{"on": ["confirm"], "url": receiver.url("/refuse")}])
        flags_file(tmp_path, "use_new_storage: true\nshadow_mode_enabled: true\n"
                             "rollback_triggers: {min_calls: 20, window: 2s}\ncanary: {steps: [10, 100], interval: 1s}\n")
        with ProxyProcess(config) as proxy:
            async with AsyncClient(proxy.target, timeout=5, retry=RetryPolicy(attempts=1)) as client:
                traffic = Traffic(client, [f"user:{n:03}" for n in range(50)])
                task = asyncio.create_task(traffic.run())

                async def refused() -> dict[str, Any] | None:
                    doc = await status(config)
                    return doc if "confirm hook" in doc["canary"]["reason"] else None

                held = await wait_for(refused, 20, "the confirm hook to hold the step")
                assert held["canary"]["step"] == 0
                assert held["canary"]["state"] == "holding"
                assert "500" in held["canary"]["reason"]
                promoted = await turnout(config, "canary", "promote", "--reason", "change board said yes")
                assert promoted["step"] == 1
                traffic.stop.set()
                await task
    finally:
        await receiver.close()


@pytest.mark.slow
async def test_checkpoint_says_no_go_before_shadow_mode_and_go_once_a_figure_is_measured(tmp_path: Path) -> None:
    """`turnout checkpoint --json`: before any shadow comparison every checkpoint is no-go (exit 1);
    after enough clean comparisons of every operation, feature_parity and discrepancy_rate are go."""
    config = write_config(tmp_path, *SQLITE_PAIR)
    flags_file(tmp_path, "use_new_storage: true\n")
    with ProxyProcess(config) as proxy:
        before = run_cli(config, "checkpoint", "--json")
        assert before.returncode == 1, before.stderr
        report = json.loads(before.stdout)
        assert report["go"] is False
        verdicts = {c["name"]: c["verdict"] for c in report["checkpoints"]}
        assert verdicts["discrepancy_rate"] == "no-go"
        assert verdicts["feature_parity"] == "no-go"
        flags_file(tmp_path, "use_new_storage: true\nshadow_mode_enabled: true\n"
                             "rollback_triggers: {discrepancy_rate: 0.05, min_calls: 20}\n")
        await asyncio.sleep(1.5)  # the flag file is re-read, and the guard notes that shadow mode began
        async with AsyncClient(proxy.target, timeout=5) as client:
            for n in range(150):
                key = f"item:{n}"
                await client.set(key, {"n": n})
                assert await client.get(key) == {"n": n}
                assert await client.has(key)
                assert [k async for k in client.keys(key)] == [key]
                assert await client.delete(key)
        await asyncio.sleep(1.5)  # the comparisons reach the discrepancy log
        after = json.loads(run_cli(config, "checkpoint", "--json").stdout)
        checkpoints = {c["name"]: c for c in after["checkpoints"]}
        assert checkpoints["feature_parity"]["verdict"] == "go", checkpoints["feature_parity"]
        discrepancy = checkpoints["discrepancy_rate"]
        assert discrepancy["verdict"] == "go", discrepancy
        assert after["go"] is False  # the others still want figures: a rollback drill, a verify, ...
