"""The migration plan between the legacy file and each server store, and between Redis and
PostgreSQL, on a running proxy with writers, against real servers; and real outages of a server store
under traffic, in shadow mode and in a 50/50 split, healing without anyone acting."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from turnout import AsyncClient, RetryPolicy, TurnoutError

from proxy.backends import open_backend
from proxy.config import BackendSpec
from tests.support.proxy_process import ProxyProcess, get_page, http_address, run_turnout, write_config
from tests.support.servers import Restartable, spec_document
from tests.support.stores import backend_contents, legacy_contents
from tests.support.writers import Writer, assert_every_acknowledged_write_held, subdivisions, turnout, writing
from tests.unit.backends.conftest import SERVER_KINDS

SERVER_SPECS = SERVER_KINDS  # each server kind of the conformance suite, by the fixture giving its spec


async def contents(spec: BackendSpec) -> dict[str, Any]:
    backend = await open_backend(spec)
    try:
        return await backend_contents(backend)
    finally:
        await backend.close()


async def seed(spec: BackendSpec, items: dict[str, Any]) -> None:
    backend = await open_backend(spec)
    try:
        await backend.set_many([(key, json.dumps(value).encode()) for key, value in items.items()])
    finally:
        await backend.close()


async def run_the_plan(config: Path, proxy: ProxyProcess, writers: list[Writer]) -> None:
    """migrate, verify, repair, cutover, rollback on the running proxy while the writers write."""
    async with writing(proxy.target, writers):
        migrated = await turnout(config, "migrate", "--live")
        assert migrated["mode"] == "live"
        assert migrated["error_count"] == 0, migrated
        verified = await turnout(config, "verify", "--live")
        assert verified["clean"], verified
        repaired = await turnout(config, "verify", "--live", "--repair")
        assert repaired["clean"], repaired
        cutover = await turnout(config, "cutover", "--monitor", "1")
        assert cutover["ok"], cutover
        await asyncio.sleep(0.3)  # writes flow to new as primary for a while
        rollback = await turnout(config, "rollback", "--reason", "drill")
        assert rollback["ok"], rollback
    drained = await turnout(config, "verify", "--live")
    assert drained["clean"], drained


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SERVER_SPECS))
async def test_the_plan_from_the_legacy_file_into_a_server_store(kind: str, tmp_path: Path,
                                                                  request: pytest.FixtureRequest) -> None:
    """jsonfile -> server store: every step succeeds under writes; both end equal, every write kept."""
    spec: BackendSpec = request.getfixturevalue(SERVER_SPECS[kind])
    legacy = dict(list(subdivisions().items())[:2000])
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"}, new=spec_document(spec))
    (tmp_path / "flags.yaml").write_text("use_new_storage: true\nshadow_mode_enabled: true\n")
    keys = sorted(legacy)
    writers = [Writer(keys[n::2]) for n in range(2)]
    with ProxyProcess(config) as proxy:
        await run_the_plan(config, proxy, writers)
    old, new = legacy_contents(tmp_path / "legacy.json"), await contents(spec)
    assert old == new
    assert_every_acknowledged_write_held(legacy, writers, new, at_least=20)


@pytest.mark.slow
@pytest.mark.parametrize(("old_kind", "new_kind"), [("redis", "postgres"), ("postgres", "redis")])
async def test_the_plan_between_redis_and_postgres(old_kind: str, new_kind: str, tmp_path: Path,
                                                   request: pytest.FixtureRequest) -> None:
    """Server store to server store, either way round: the same plan, the same guarantees."""
    old_spec: BackendSpec = request.getfixturevalue(SERVER_SPECS[old_kind])
    new_spec: BackendSpec = request.getfixturevalue(SERVER_SPECS[new_kind])
    legacy = dict(list(subdivisions().items())[:2000])
    await seed(old_spec, legacy)
    config = write_config(tmp_path, old=spec_document(old_spec), new=spec_document(new_spec))
    (tmp_path / "flags.yaml").write_text("use_new_storage: true\nshadow_mode_enabled: true\n")
    keys = sorted(legacy)
    writers = [Writer(keys[n::2]) for n in range(2)]
    with ProxyProcess(config) as proxy:
        await run_the_plan(config, proxy, writers)
    old, new = await contents(old_spec), await contents(new_spec)
    assert old == new
    assert_every_acknowledged_write_held(legacy, writers, new, at_least=20)


def metric_value(page: str, name: str, labels: dict[str, str]) -> float:
    """The value of one sample of a /metrics page, parsed with prometheus-client's own parser."""
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels} on the page")


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def outage_and_spec(kind: str, server: str, request: pytest.FixtureRequest) -> tuple[Restartable, BackendSpec]:
    """A server an outage test may stop, and the spec of a fresh store on it."""
    outage: Restartable = request.getfixturevalue(server)
    if kind == "grpc":  # the upstream of this test alone: the session's serves the other tests
        return outage, outage.spec()  # type: ignore[attr-defined]
    return outage, request.getfixturevalue(SERVER_SPECS[kind])


def new_backend_status(status: dict[str, Any]) -> dict[str, Any]:
    return next(b for b in status["backends"] if b["name"] == "new")


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "server"), [("redis", "redis_server"), ("postgres", "postgres_server")])
@pytest.mark.parametrize("flags", ["shadow", "split"])
async def test_an_outage_of_the_new_store_under_traffic_heals_by_itself(
        kind: str, server: str, flags: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Stop the new store's server while traffic runs: callers whose primary is old see no failure, the
    outage shows in status, metrics and health; restart it and the queue drains to verify-clean."""
    outage, spec = outage_and_spec(kind, server, request)
    config = write_config(tmp_path, old={"type": "sqlite", "path": "old.sqlite"}, new=spec_document(spec))
    text = "use_new_storage: true\n" + ("shadow_mode_enabled: true\n" if flags == "shadow"
                                        else "traffic_percentage: {read: 50, write: 50}\n")
    (tmp_path / "flags.yaml").write_text(text)
    with ProxyProcess(config) as proxy:
        async with AsyncClient(proxy.target, timeout=10) as client:
            keys = [f"k{i:03}" for i in range(200)]
            routes = {key: (await turnout(config, "route", key, "--op", "set"))["route"] for key in keys[:40]} \
                if flags == "split" else {}
            on_old = [key for key in keys if flags == "shadow" or routes.get(key) == "old"]
            assert on_old
            failures: list[str] = []
            stop = asyncio.Event()
            written: dict[str, int] = {}

            async def traffic() -> None:
                i = 0
                while not stop.is_set():
                    key = on_old[i % len(on_old)]
                    try:
                        await client.set(key, {"i": i})
                        written[key] = i
                        assert await client.get(key) == {"i": i}
                    except TurnoutError as exc:
                        failures.append(f"{key}: {exc}")
                    i += 1
                    await asyncio.sleep(0.005)

            task = asyncio.create_task(traffic())
            await asyncio.sleep(0.5)
            outage.stop()
            try:
                async def unhealthy() -> bool:
                    return not new_backend_status(await turnout(config, "status"))["healthy"]

                await wait_for(unhealthy, 20, "status to show the new store unhealthy")
                metrics = get_page(http_address(tmp_path / "state"), "/metrics")
                assert metric_value(metrics, "turnout_backend_healthy", {"backend": "new"}) == 0
                await asyncio.sleep(1.0)  # traffic keeps flowing to old meanwhile
                status = await turnout(config, "status")
                assert status["replication"]["depth"] > 0  # writes wait for new in the durable queue
            finally:
                if not outage.running:
                    outage.start()

            async def drained() -> bool:
                status = await turnout(config, "status")
                return bool(new_backend_status(status)["healthy"]) and status["replication"]["depth"] == 0

            await wait_for(drained, 60, "the new store to be healthy and the queue drained")
            stop.set()
            await task
            assert failures == []
            assert written
        verified = await turnout(config, "verify", "--live")
        assert verified["clean"], verified


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "server"), [("redis", "redis_server"), ("postgres", "postgres_server"),
                                              ("grpc", "upstream_server")])
async def test_a_server_down_at_start_up_leaves_the_proxy_serving_from_the_other_store(
        kind: str, server: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The proxy starts with the new store's server down: old serves, new's calls are UNAVAILABLE and
    it shows unhealthy; when the server comes up, health turns and the writes waiting for it land."""
    outage, spec = outage_and_spec(kind, server, request)
    config = write_config(tmp_path, old={"type": "sqlite", "path": "old.sqlite"}, new=spec_document(spec))
    (tmp_path / "flags.yaml").write_text("use_new_storage: true\nenabled_for_keys: ['^new:']\n")
    outage.stop()
    try:
        with ProxyProcess(config) as proxy:
            # One attempt per call: the client's own retries of UNAVAILABLE would only wait longer.
            async with AsyncClient(proxy.target, timeout=15, retry=RetryPolicy(attempts=1)) as client:
                await client.set("old:1", {"here": True})  # old serves, and its write waits for new
                assert await client.get("old:1") == {"here": True}
                with pytest.raises(TurnoutError) as refused:
                    await client.get("new:1")
                assert refused.value.code.name == "UNAVAILABLE"
                status = await turnout(config, "status")
                assert not new_backend_status(status)["healthy"]
                assert status["replication"]["depth"] >= 1
                outage.start()

                async def healed() -> bool:
                    status = await turnout(config, "status")
                    return bool(new_backend_status(status)["healthy"]) and status["replication"]["depth"] == 0

                await wait_for(healed, 60, "the new store to turn healthy and the queue to drain")
                await client.set("new:1", {"there": True})
                assert await client.get("new:1") == {"there": True}
    finally:
        if not outage.running:
            outage.start()
    assert (await contents(spec))["old:1"] == {"here": True}


def test_validate_old_reports_what_postgres_as_new_could_not_hold(tmp_path: Path) -> None:
    """`turnout validate --store old` names the documents and keys the new store's type refuses, before
    a migration meets them; the same file is fine when new is a store that holds them."""
    (tmp_path / "legacy.json").write_text(json.dumps({"fine": {"a": 1}, "nul-string": {"a": "x\u0000y"},
                                                      "nul\u0000key": 1}))
    into_postgres = write_config(tmp_path / "pg", old={"type": "jsonfile", "path": str(tmp_path / "legacy.json")},
                                 new={"type": "postgres", "dsn": "postgresql://turnout@127.0.0.1:1/turnout"})
    found = run_turnout(into_postgres, "validate", "--store", "old", expect=1)
    assert found["checked"] == 3
    problems = {sample["key"]: sample["problem"] for sample in found["samples"]}
    # keys are shown escaped (validate's samples are for a terminal), the NUL as \x00
    assert problems == {"nul-string": "string_holds_nul", "nul\\x00key": "key_holds_nul"}
    into_sqlite = write_config(tmp_path / "sq", old={"type": "jsonfile", "path": str(tmp_path / "legacy.json")},
                               new={"type": "sqlite", "path": "new.sqlite"})
    assert run_turnout(into_sqlite, "validate", "--store", "old")["ok"]
