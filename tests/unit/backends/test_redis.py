"""What the redis store does beyond the conformance suite, on real redis-server processes: literal glob
characters, key prefixes, masked passwords, outages and a Redis Cluster's failover."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.backends.base import get_many
from proxy.backends.redis import RedisBackend, match_pattern
from proxy.backends.registry import STORE_TYPES
from proxy.config import BackendSpec
from proxy.errors import BackendUnavailable
from tests.support.servers.redis import PASSWORD, RedisClusterServers, RedisServer, free_port, spec_of

#: Bounds each test's waiting on a store that should recover, so a broken one fails instead of hanging.
RECOVERY_SECONDS = 60
#: Short timeouts for the outage tests, so a call against a stopped server gives up quickly.
QUICK = {"connect_timeout": 0.5, "call_timeout": 0.5}


@pytest.fixture(params=["redis", "redis-cluster"])
def spec(request: pytest.FixtureRequest) -> BackendSpec:
    """A fresh key prefix on the standalone server, then on the cluster."""
    fixture = "redis_spec" if request.param == "redis" else "redis_cluster_spec"
    found: BackendSpec = request.getfixturevalue(fixture)
    return found


@pytest.fixture
async def store(spec: BackendSpec) -> AsyncIterator[RedisBackend]:
    backend = await RedisBackend.open(spec)
    yield backend
    await backend.close()


async def listed(backend: RedisBackend, prefix: str = "", page_size: int = 1000) -> list[str]:
    return [key async for page in backend.keys(prefix, page_size) for key in page]


async def until_answers(call: Any) -> Any:
    """The first answer of a call retried while the store is unavailable (a server coming back)."""
    async with asyncio.timeout(RECOVERY_SECONDS):
        while True:
            try:
                return await call()
            except BackendUnavailable:
                await asyncio.sleep(0.1)


async def until_down(call: Any) -> None:
    """Call until the call raises (a cluster notices a lost node only once a call touches it)."""
    async with asyncio.timeout(RECOVERY_SECONDS):
        while True:
            await call()
            await asyncio.sleep(0.1)


def test_match_pattern_escapes_every_glob_character() -> None:
    """`*?[]\\` in a prefix are escaped for SCAN MATCH, and the pattern ends in one `*`."""
    assert match_pattern(b"a*b?c[d]e\\f") == b"a\\*b\\?c\\[d\\]e\\\\f*"
    assert match_pattern(b"") == b"*"


GLOB_KEYS = ["*", "**", "*a", "a*", "a*b", "?", "a?", "ab", "[", "[a]", "a", "]", "\\", "\\*", "a\\b", "[^a]", "[a-z]",
             "z", "-", "^"]


@pytest.mark.parametrize("prefix", ["*", "a*", "?", "a", "[", "[a", "]", "\\", "\\*", "[a-", "[^", "^", "-"])
async def test_glob_characters_are_plain_characters(store: RedisBackend, prefix: str) -> None:
    """Keys holding `*`, `?`, `[`, `]`, `\\` list exactly under prefixes holding them: no glob matching."""
    await store.set_many([(key, json.dumps(key).encode()) for key in GLOB_KEYS])
    expected = sorted(key for key in GLOB_KEYS if key.startswith(prefix))
    assert sorted(await listed(store, prefix)) == expected
    assert sorted([key async for page in store.scan(prefix, 3) for key, _ in page]) == expected


async def test_documents_are_strings_under_the_key_prefix(redis_server: RedisServer) -> None:
    """In Redis the store is the string `key_prefix + key` holding the document's bytes as given."""
    spec = redis_server.spec()
    backend = await RedisBackend.open(spec)
    try:
        await backend.set("user:1", b'{"n": 1}')
        await backend.set("nul\x00é", b"[1, 2]")
        with redis_server.node.client() as raw:
            prefix = spec.options["key_prefix"].encode()
            assert raw.get(prefix + b"user:1") == b'{"n": 1}'
            assert raw.get(prefix + "nul\x00é".encode()) == b"[1, 2]"
            assert raw.type(prefix + b"user:1") == b"string"
    finally:
        await backend.close()


async def test_key_prefixes_keep_stores_apart(spec: BackendSpec) -> None:
    """Two stores with different key prefixes on one server never see each other's keys."""
    other_spec = BackendSpec(type="redis", options={**spec.options, "key_prefix": spec.options["key_prefix"] + "x:"})
    bare_spec = BackendSpec(type="redis", options={**spec.options, "key_prefix": "other-" + spec.options["key_prefix"]})
    one, other, bare = [await RedisBackend.open(s) for s in (spec, other_spec, bare_spec)]
    try:
        await one.set("a", b"1")
        await other.set("a", b"2")
        await bare.set("a", b"3")
        assert await one.get("a") == b"1"
        assert await other.get("a") == b"2"
        assert await other.delete("a")
        assert await one.get("a") == b"1"
        assert await listed(one) == ["a"]
        assert await listed(other) == []
        assert await listed(bare) == ["a"]
    finally:
        for backend in (one, other, bare):
            await backend.close()


async def test_a_key_that_is_not_utf8_is_reported_not_mangled(redis_server: RedisServer) -> None:
    """A key another program wrote under the prefix that is not UTF-8 makes listing fail with a message naming it."""
    spec = redis_server.spec()
    backend = await RedisBackend.open(spec)
    try:
        with redis_server.node.client() as raw:
            raw.set(spec.options["key_prefix"].encode() + b"bad\xff", b"1")
        with pytest.raises(BackendUnavailable, match="not UTF-8"):
            await listed(backend)
    finally:
        await backend.close()


@pytest.mark.parametrize(("url", "cluster", "error"), [
    ("redis://:pw@127.0.0.1:63x79/0", False, "url: the port must be a number"),
    ("redis://:pw@127.0.0.1:6379/2", True, "url: a Redis Cluster has database 0 only"),
])
def test_config_refuses_a_url_the_client_could_not_use(url: str, cluster: bool, error: str) -> None:
    """A URL redis-py would refuse at open is refused when the config is read, without quoting the password."""
    check = STORE_TYPES["redis"].check_options
    assert check is not None
    with pytest.raises(ValueError, match=error) as caught:
        check({"url": url, "cluster": cluster})
    assert "pw" not in str(caught.value)


async def test_wrong_password_is_unavailable_and_never_shown(redis_server: RedisServer) -> None:
    """A wrong password gives BackendUnavailable whose message holds neither it nor the real one."""
    wrong = "wr0ng-pa55word"
    spec = spec_of(f"redis://:{wrong}@127.0.0.1:{redis_server.port}/0", False, **QUICK)
    backend = await RedisBackend.open(spec)
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await backend.get("k")
        assert wrong not in str(caught.value)
        assert PASSWORD not in str(caught.value)
        assert "redis 127.0.0.1:" in str(caught.value)
    finally:
        await backend.close()


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "redis-cluster"])
async def test_open_with_server_down_returns_at_once_and_probe_raises(cluster: bool) -> None:
    """Opening a store whose server is down waits for nothing; probe and calls raise BackendUnavailable, password masked."""
    spec = spec_of(f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0", cluster, **QUICK)
    backend = await RedisBackend.open(spec)  # no server: this returning at all is the point
    try:
        for call in (backend.probe, lambda: backend.get("k"), lambda: backend.set("k", b"1"), lambda: listed(backend)):
            with pytest.raises(BackendUnavailable) as caught:
                await call()
            assert PASSWORD not in str(caught.value)
    finally:
        await backend.close()


@pytest.mark.slow
async def test_server_stopped_then_restarted(redis_server: RedisServer) -> None:
    """With the server killed, calls raise BackendUnavailable; once it is back, the same store serves again with every acknowledged write."""
    backend = await RedisBackend.open(redis_server.spec(**QUICK))
    try:
        await backend.set_many([(f"k{i}", str(i).encode()) for i in range(100)])
        await backend.set("last", b"1")
        redis_server.stop(kill=True)  # a crash: only what the AOF fsynced survives
        try:
            for call in (backend.probe, lambda: backend.get("k1"), lambda: backend.set("k", b"1"),
                         lambda: backend.delete("k1"), lambda: listed(backend)):
                with pytest.raises(BackendUnavailable) as caught:
                    await call()
                assert PASSWORD not in str(caught.value)
        finally:
            redis_server.start()
        await until_answers(backend.probe)
        assert await backend.get("last") == b"1"
        assert await get_many(backend, [f"k{i}" for i in range(100)]) == [str(i).encode() for i in range(100)]
        await backend.set("after", b"2")
        assert await backend.get("after") == b"2"
    finally:
        await backend.close()


async def test_a_paused_server_times_out_then_answers(redis_server: RedisServer) -> None:
    """A server that stops answering (CLIENT PAUSE) makes calls fail within the call timeout, then they succeed again."""
    backend = await RedisBackend.open(redis_server.spec(connect_timeout=0.3, call_timeout=0.3))
    try:
        await backend.set("k", b"1")
        with redis_server.node.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", 2000, "ALL")
        with pytest.raises(BackendUnavailable, match="no answer within"):
            await backend.get("k")
        assert await until_answers(lambda: backend.get("k")) == b"1"
    finally:
        await backend.close()


async def test_close_lets_queued_writes_finish(spec: BackendSpec) -> None:
    """Writes already issued when close is called are all answered and kept; calls after close are refused."""
    first = await RedisBackend.open(spec)
    writes = [asyncio.create_task(first.set(f"k{i}", str(i).encode())) for i in range(50)]
    await asyncio.sleep(0)
    await first.close()
    assert await asyncio.gather(*writes) == [None] * 50
    with pytest.raises(BackendUnavailable, match="closed"):
        await first.get("k1")
    second = await RedisBackend.open(spec)
    try:
        assert await get_many(second, [f"k{i}" for i in range(50)]) == [str(i).encode() for i in range(50)]
    finally:
        await second.close()


# -- Redis Cluster -------------------------------------------------------------------------------


@pytest.fixture
async def cluster_store(redis_cluster: RedisClusterServers) -> AsyncIterator[tuple[RedisBackend, BackendSpec]]:
    spec = redis_cluster.spec(**QUICK)
    backend = await RedisBackend.open(spec)
    yield backend, spec
    await backend.close()


async def test_cluster_keys_on_every_master_are_listed_once(
    redis_cluster: RedisClusterServers, cluster_store: tuple[RedisBackend, BackendSpec]
) -> None:
    """Keys spread over all three masters are each listed once, and one get_many reads across slots."""
    backend, spec = cluster_store
    keys = [f"user:{i}" for i in range(300)]
    await backend.set_many([(key, key.encode()) for key in keys])
    prefix = spec.options["key_prefix"].encode()
    holders = {redis_cluster.master_of(prefix + key.encode()).port for key in keys[:60]}
    assert len(holders) == 3
    pages = [page async for page in backend.keys("user:", 7)]
    flat = [key for page in pages for key in page]
    assert sorted(flat) == sorted(keys)
    assert all(len(page) <= 7 for page in pages)
    assert await get_many(backend, [*keys, "absent"]) == [key.encode() for key in keys] + [None]


async def test_calls_starting_together_on_a_fresh_cluster_store_all_succeed(
    redis_cluster: RedisClusterServers,
) -> None:
    """Two hundred gets and sets issued at once on a store that has not met the cluster yet all succeed."""
    spec = redis_cluster.spec()
    seeding = await RedisBackend.open(spec)
    await seeding.set_many([(f"k{i}", str(i).encode()) for i in range(100)])
    await seeding.close()
    backend = await RedisBackend.open(spec)
    try:
        answers = await asyncio.gather(*(backend.get(f"k{i}") for i in range(100)),
                                       *(backend.set(f"n{i}", b"1") for i in range(100)))
        assert answers == [str(i).encode() for i in range(100)] + [None] * 100
    finally:
        await backend.close()


@pytest.mark.slow
async def test_cluster_planned_failover_keeps_serving(
    redis_cluster: RedisClusterServers, cluster_store: tuple[RedisBackend, BackendSpec]
) -> None:
    """After CLUSTER FAILOVER moves a master's slots to its replica, the same store reads and writes them."""
    backend, spec = cluster_store
    await backend.set_many([(f"k{i}", str(i).encode()) for i in range(200)])
    master = redis_cluster.master_of(spec.options["key_prefix"].encode() + b"k0")
    try:
        redis_cluster.fail_over(master)
        assert await until_answers(lambda: backend.get("k0")) == b"0"
        await until_answers(lambda: backend.set("k0", b"new"))
        assert await backend.get("k0") == b"new"
        assert len(await listed(backend)) == 200
    finally:
        redis_cluster.restore()


@pytest.mark.slow
async def test_cluster_master_crash_loses_no_acknowledged_write(
    redis_cluster: RedisClusterServers, cluster_store: tuple[RedisBackend, BackendSpec]
) -> None:
    """A master killed under a stream of writes: calls fail for a while, then succeed, and every acknowledged write is readable."""
    backend, spec = cluster_store
    acknowledged: dict[str, bytes] = {}
    refused = 0
    stop, progressed = asyncio.Event(), asyncio.Event()

    async def until_acknowledged(count: int) -> None:
        async with asyncio.timeout(RECOVERY_SECONDS):
            while len(acknowledged) < count:
                await progressed.wait()
                progressed.clear()

    async def writer(n: int) -> None:
        nonlocal refused
        i = 0
        while not stop.is_set():
            key, value = f"w{n}:{i}", str(i).encode()
            try:
                await backend.set(key, value)
                acknowledged[key] = value
                progressed.set()
            except BackendUnavailable:
                refused += 1
                await asyncio.sleep(0.05)
            i += 1

    writers = [asyncio.create_task(writer(n)) for n in range(8)]
    try:
        await until_acknowledged(200)
        master = redis_cluster.master_of(spec.options["key_prefix"].encode() + b"w0:0")
        await asyncio.to_thread(redis_cluster.crash_master, master)
        settled = len(acknowledged)
        await until_acknowledged(settled + 200)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    try:
        values = await until_answers(lambda: get_many(backend, list(acknowledged)))
        lost = [key for key, value in zip(acknowledged, values, strict=True) if value != acknowledged[key]]
        assert lost == []
        assert refused > 0, "the crash never made a write fail: the test did not test a failover"
    finally:
        await asyncio.to_thread(redis_cluster.restore)


@pytest.mark.slow
async def test_cluster_write_is_acknowledged_only_once_a_replica_has_it(
    redis_cluster: RedisClusterServers, cluster_store: tuple[RedisBackend, BackendSpec]
) -> None:
    """With the replica hung, a write is refused as not acknowledged; the master then crashes, and the promoted replica has every acknowledged write."""
    backend, spec = cluster_store
    # One hash tag: both keys live in one slot, so on one master.
    await backend.set_many([("{t}acknowledged", b"1"), ("{t}refused", b"0")])
    master = redis_cluster.master_of(spec.options["key_prefix"].encode() + b"{t}acknowledged")
    replica = redis_cluster.replica_of(master)
    replica.freeze()  # the master still takes writes; its replica copies nothing until thawed
    try:
        # Shorter than the cluster's node timeout, so the replica is not yet known failed and still promotable.
        with pytest.raises(BackendUnavailable, match="not acknowledged"):
            await backend.set("{t}refused", b"2")
    finally:
        await asyncio.to_thread(redis_cluster.crash_master, master, replica)
    try:
        assert await until_answers(lambda: backend.get("{t}acknowledged")) == b"1"
        # The refused write may have landed (the thawed replica reads what was already sent to it): either is right.
        assert await backend.get("{t}refused") in (b"0", b"2")
    finally:
        await asyncio.to_thread(redis_cluster.restore)


@pytest.mark.slow
async def test_cluster_replica_down_writes_go_on(
    redis_cluster: RedisClusterServers, cluster_store: tuple[RedisBackend, BackendSpec]
) -> None:
    """With a master's replica stopped, writes to that master succeed again once the cluster knows it is gone."""
    backend, spec = cluster_store
    master = redis_cluster.master_of(spec.options["key_prefix"].encode() + b"k")
    replica = redis_cluster.replica_of(master)
    replica.stop()
    try:
        await until_answers(lambda: backend.set("k", b"1"))
        assert await backend.get("k") == b"1"
    finally:
        await asyncio.to_thread(redis_cluster.restore)


@pytest.mark.slow
async def test_cluster_probe_pings_every_master(redis_cluster: RedisClusterServers) -> None:
    """probe answers on a whole cluster, raises once a shard is gone entirely, and answers again when it is back."""
    backend = await RedisBackend.open(redis_cluster.spec(**QUICK))
    try:
        await backend.probe()
        master = redis_cluster.masters()[0]
        replica = redis_cluster.replica_of(master)
        replica.stop()
        master.stop()
        try:
            with pytest.raises(BackendUnavailable) as caught:
                await until_down(backend.probe)
            assert PASSWORD not in str(caught.value)
        finally:
            await asyncio.to_thread(redis_cluster.restore)
        await until_answers(backend.probe)
    finally:
        await backend.close()
