"""The `grpc` store against a real second `turnout serve`: outages, restarts, a stalled server,
refusals, TLS, and the order of writes to one key. The conformance suite covers the rest."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from turnout.client import RetryPolicy, SyncClient, Unavailable
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from proxy.backends.upstream import UpstreamBackend
from proxy.backends.upstream_order import WriteOrder
from proxy.config import parse_config
from proxy.errors import BackendUnavailable, ConfigError, InvalidArgument
from tests.live.test_security import Certificates, certificates  # noqa: F401 (certificates is a fixture)
from tests.support.proxy_process import ProxyProcess, write_config
from tests.support.servers.upstream import UpstreamServer, free_port, grpc_spec

#: The call deadline of these tests' stores: short, so an outage shows quickly.
CALL_TIMEOUT = 1.0
#: How long a test waits for what must happen within CALL_TIMEOUT (slack for a loaded 2-core machine);
#: only a hang past it fails the test, never a slow but correct answer.
BOUND = 10 * CALL_TIMEOUT


@pytest.fixture
async def store(upstream_server: UpstreamServer) -> AsyncIterator[UpstreamBackend]:
    """A grpc store on this test's own upstream, with short timeouts."""
    backend = await UpstreamBackend.open(upstream_server.spec(call_timeout=CALL_TIMEOUT, connect_timeout=CALL_TIMEOUT))
    yield backend
    await backend.close()


async def until_healthy(store: UpstreamBackend) -> None:
    """Probe until one succeeds, as the proxy's prober does (every second while failing); only BOUND fails.

    One probe alone can time out right after the server came back: the channel may still be waiting out
    its reconnect backoff (up to 1 s, with jitter) when the probe's 1 s deadline ends."""
    async with asyncio.timeout(BOUND):
        while True:
            try:
                await store.probe()
                return
            except BackendUnavailable:
                await asyncio.sleep(0.1)


async def test_a_stopped_upstream_fails_calls_with_backend_unavailable(upstream_server: UpstreamServer,
                                                                      store: UpstreamBackend) -> None:
    """With the upstream stopped, every kind of call raises BackendUnavailable, within its deadline."""
    await store.set("k", b"1")
    upstream_server.stop()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get("k"), lambda: store.has("k"), lambda: store.set("k", b"2"), lambda: store.delete("k"),
        lambda: store.set_many([("a", b"1")]), lambda: store.get_many(["a", "k"])]
    async with asyncio.timeout(BOUND):
        for call in calls:
            with pytest.raises(BackendUnavailable, match=re.escape(upstream_server.target)):
                await call()
        with pytest.raises(BackendUnavailable):
            _ = [page async for page in store.keys()]
        with pytest.raises(BackendUnavailable):
            await store.probe()


async def test_a_restarted_upstream_is_served_again_without_reopening(upstream_server: UpstreamServer,
                                                                      store: UpstreamBackend) -> None:
    """Once the upstream is back on its port, the same store object probes healthy and serves calls again."""
    await store.set("before", b"1")
    upstream_server.stop()
    with pytest.raises(BackendUnavailable):
        await store.get("before")
    upstream_server.start()
    await until_healthy(store)
    await store.set("after", b'{"back": true}')
    assert json.loads(await store.get("after") or b"") == {"back": True}
    assert await store.get("before") is None  # the upstream kept its data in memory: it came back empty
    assert [page async for page in store.keys()] == [["after"]]


async def test_opening_with_the_upstream_down_returns_at_once_and_probe_fails() -> None:
    """Opening a store whose server is not there does not wait for it; probe and calls then fail with BackendUnavailable."""
    spec = grpc_spec(f"127.0.0.1:{free_port()}", call_timeout=CALL_TIMEOUT, connect_timeout=CALL_TIMEOUT)
    async with asyncio.timeout(BOUND):
        backend = await UpstreamBackend.open(spec)
        try:
            with pytest.raises(BackendUnavailable):
                await backend.probe()
            with pytest.raises(BackendUnavailable):
                await backend.get("k")
        finally:
            await backend.close()


async def test_an_upstream_coming_up_after_open_is_served(tmp_path: Path) -> None:
    """A store opened before its upstream started serves once the upstream is up, without reopening."""
    server = UpstreamServer(tmp_path)
    backend = await UpstreamBackend.open(server.spec(call_timeout=CALL_TIMEOUT, connect_timeout=CALL_TIMEOUT))
    try:
        with pytest.raises(BackendUnavailable):
            await backend.probe()
        server.start()
        await until_healthy(backend)
        await backend.set("k", b"1")
        assert await backend.get("k") == b"1"
    finally:
        await backend.close()
        server.stop()


@pytest.mark.parametrize(("key", "value", "field"), [
    ("k", b"{not json", "value"),
    ("k", b'{"a": 1} {"b": 2}', "value"),
    ("", b"1", "key"),
    ("k" * 1025, b"1", "key"),
])
async def test_a_refusal_of_the_upstream_is_invalid_argument_with_its_message(
        store: UpstreamBackend, key: str, value: bytes, field: str) -> None:
    """What the upstream refuses as malformed surfaces as InvalidArgument naming the field, and nothing is written."""
    with pytest.raises(InvalidArgument, match=f"^{field}"):
        await store.set(key, value)
    with pytest.raises(InvalidArgument, match=f"^{field}"):
        await store.set_many([(key, value)])
    assert [page async for page in store.keys()] == []


async def test_a_read_only_upstream_refuses_writes_and_serves_reads(tmp_path: Path) -> None:
    """An upstream whose flags say read_only refuses Set and Delete with BackendUnavailable saying so; Get still works."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "flags.yaml").write_text("read_only: true\n")
    server = UpstreamServer(tmp_path).start()
    backend = await UpstreamBackend.open(server.spec(call_timeout=CALL_TIMEOUT))
    try:
        with pytest.raises(BackendUnavailable, match=r"(?i)read.only"):
            await backend.set("k", b"1")
        with pytest.raises(BackendUnavailable, match=r"(?i)read.only"):
            await backend.delete("k")
        assert await backend.get("k") is None
    finally:
        await backend.close()
        server.stop()


async def test_a_stalled_upstream_fails_calls_at_their_deadline_and_serves_once_resumed(
        upstream_server: UpstreamServer, store: UpstreamBackend) -> None:
    """With the upstream paused (SIGSTOP), calls and a listing give BackendUnavailable at their deadline
    instead of hanging; once it runs again (SIGCONT) the same store serves."""
    await store.set("k", b"1")
    os.kill(upstream_server.pid, signal.SIGSTOP)
    try:
        async with asyncio.timeout(BOUND):
            with pytest.raises(BackendUnavailable):
                await store.get("k")
            with pytest.raises(BackendUnavailable):
                await store.set("k", b"2")
            with pytest.raises(BackendUnavailable):
                _ = [page async for page in store.keys()]
            with pytest.raises(BackendUnavailable):
                await store.probe()
    finally:
        os.kill(upstream_server.pid, signal.SIGCONT)
    await until_healthy(store)
    assert await store.get("k") in (b"1", b"2")  # the Set given up at its deadline may have landed after


async def test_a_listing_abandoned_early_leaves_the_store_usable(store: UpstreamBackend) -> None:
    """A reader that stops after the first page of keys ends the stream; the store goes on serving."""
    await store.set_many([(f"k{i:03}", b"1") for i in range(300)])
    async for page in store.keys(page_size=10):
        assert len(page) == 10
        break
    assert await store.has("k000")
    assert sum([len(page) async for page in store.keys(page_size=64)]) == 300


async def test_calls_after_close_fail_with_backend_unavailable(store: UpstreamBackend) -> None:
    """A closed store refuses calls with BackendUnavailable rather than a gRPC usage error."""
    await store.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        await store.get("k")


async def assert_served_and_refused(server: UpstreamServer, served: dict[str, Any], refused: dict[str, Any]) -> None:
    """A store opened on the TLS server with the `served` options works (set, get, probe); one opened
    with the `refused` options is unavailable, not wrong. Stops the server."""
    good = await UpstreamBackend.open(server.spec(**served))
    bad = await UpstreamBackend.open(server.spec(**refused))
    try:
        await good.set("k", b"1")
        assert await good.get("k") == b"1"
        await good.probe()
        with pytest.raises(BackendUnavailable):
            await bad.get("k")
    finally:
        await good.close()
        await bad.close()
        server.stop()


async def test_tls_upstream_is_reached_with_its_ca_and_refused_without(
        tmp_path: Path, certificates: Certificates) -> None:  # noqa: F811 (the fixture imported above)
    """An upstream serving TLS is served with ca_file set; without TLS the store is unavailable, not wrong."""
    server = UpstreamServer(tmp_path, tls={"cert_file": str(certificates.server_cert),
                                           "key_file": str(certificates.server_key)}).start()
    await assert_served_and_refused(server, served={"ca_file": str(certificates.ca), "call_timeout": CALL_TIMEOUT},
                                    refused={"call_timeout": CALL_TIMEOUT, "connect_timeout": CALL_TIMEOUT})


async def test_mtls_upstream_needs_the_client_certificate(
        tmp_path: Path, certificates: Certificates) -> None:  # noqa: F811 (the fixture imported above)
    """An upstream asking for client certificates serves the store given cert_file and key_file, and refuses one without."""
    server = UpstreamServer(tmp_path, tls={"cert_file": str(certificates.server_cert),
                                           "key_file": str(certificates.server_key),
                                           "client_ca_file": str(certificates.ca)}).start()
    timeouts: dict[str, Any] = {"call_timeout": CALL_TIMEOUT, "connect_timeout": CALL_TIMEOUT}
    await assert_served_and_refused(
        server, served={"ca_file": str(certificates.ca), "cert_file": str(certificates.client_cert),
                        "key_file": str(certificates.client_key), **timeouts},
        refused={"ca_file": str(certificates.ca), **timeouts})


async def test_an_unreadable_ca_file_is_refused_naming_the_option(tmp_path: Path) -> None:
    """Opening a store whose ca_file cannot be read fails with ConfigError naming ca_file."""
    with pytest.raises(ConfigError, match="ca_file"):
        await UpstreamBackend.open(grpc_spec("127.0.0.1:1", ca_file=str(tmp_path / "missing.pem")))


@pytest.mark.parametrize(("options", "message"), [
    ({"retries": 5}, "retries: gRPC makes at most 5 attempts"),
    ({"cert_file": "c.pem"}, "cert_file: a client certificate needs both"),
    ({"key_file": "k.pem"}, "cert_file: a client certificate needs both"),
    ({"cert_file": "c.pem", "key_file": "k.pem"}, "cert_file: a client certificate is shown over TLS only"),
    ({"token_file": "t"}, "token_file"),
    ({"target": "no-port"}, "target: must be host:port"),
])
def test_the_config_refuses_grpc_options_that_cannot_work(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    """A grpc store's options that cannot work together are refused when the config is read, naming the field."""
    doc = {"listen": "127.0.0.1:0", "flags": "flags.yaml", "state_dir": "state",
           "backends": {"old": {"type": "memory"}, "new": {"type": "grpc", "target": "127.0.0.1:1", **options}}}
    with pytest.raises(ConfigError, match=message):
        parse_config(doc, base=tmp_path)


async def test_a_write_given_up_while_waiting_keeps_the_next_write_behind_the_one_before() -> None:
    """Three writes of one key in a line: cancelling the middle one while the first runs does not let the
    third start before the first is done."""
    order = WriteOrder()
    started: list[str] = []
    first_may_end = asyncio.Event()

    async def write(name: str, hold: asyncio.Event | None = None) -> None:
        async with order.turn("k"):
            started.append(name)
            if hold is not None:
                await hold.wait()

    first = asyncio.create_task(write("first", first_may_end))
    second = asyncio.create_task(write("second"))
    third = asyncio.create_task(write("third"))
    await asyncio.sleep(0)
    assert started == ["first"]
    second.cancel()
    for _ in range(5):  # let the cancellation and anything it would wrongly release run
        await asyncio.sleep(0)
    assert started == ["first"]
    first_may_end.set()
    await asyncio.gather(first, third)
    assert second.cancelled()
    assert started == ["first", "third"]


class FlakyKeyValue(kv_pb2_grpc.KeyValueServicer):
    """A real KeyValue server (in this process) whose every call fails with UNAVAILABLE `failures` times
    before it is served; it counts the attempts it saw of each method."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: Counter[str] = Counter()

    async def _attempt(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.attempts[method] += 1
        if self.attempts[method] <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> kv_pb2.GetResponse:
        await self._attempt("Get", context)
        return kv_pb2.GetResponse(found=True, value=b"1")

    async def Has(self, request: kv_pb2.HasRequest, context: grpc.aio.ServicerContext[Any, Any]) -> kv_pb2.HasResponse:
        await self._attempt("Has", context)
        return kv_pb2.HasResponse(found=True)

    async def Set(self, request: kv_pb2.SetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> kv_pb2.SetResponse:
        await self._attempt("Set", context)
        return kv_pb2.SetResponse()

    async def Delete(self, request: kv_pb2.DeleteRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> kv_pb2.DeleteResponse:
        await self._attempt("Delete", context)
        return kv_pb2.DeleteResponse(existed=True)

    async def Keys(self, request: kv_pb2.KeysRequest,
                   context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[kv_pb2.KeysResponse]:
        await self._attempt("Keys", context)
        yield kv_pb2.KeysResponse(keys=["a", "b"])


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyKeyValue, str]]:
    """A KeyValue server on a free loopback port that fails each method's first two attempts."""
    servicer = FlakyKeyValue(failures=2)
    server = grpc.aio.server()
    kv_pb2_grpc.add_KeyValueServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_reads_and_set_are_retried_on_unavailable_and_delete_is_not(flaky: tuple[FlakyKeyValue, str]) -> None:
    """Get, Has, Keys and Set ride over UNAVAILABLE answers by retrying; Delete, whose `existed` a retry could
    falsify, is sent once and fails."""
    servicer, target = flaky
    backend = await UpstreamBackend.open(grpc_spec(target, retries=2))
    try:
        assert await backend.get("k") == b"1"
        assert await backend.has("k")
        await backend.set("k", b"1")
        assert [page async for page in backend.keys()] == [["a", "b"]]
        with pytest.raises(BackendUnavailable, match="UNAVAILABLE: try again"):
            await backend.delete("k")
    finally:
        await backend.close()
    assert servicer.attempts == {"Get": 3, "Has": 3, "Set": 3, "Keys": 3, "Delete": 1}


async def test_retries_stop_at_the_configured_count(flaky: tuple[FlakyKeyValue, str]) -> None:
    """With retries: 1, a call the server fails twice is tried twice and then fails with BackendUnavailable."""
    servicer, target = flaky
    backend = await UpstreamBackend.open(grpc_spec(target, retries=1))
    try:
        with pytest.raises(BackendUnavailable, match="UNAVAILABLE"):
            await backend.get("k")
    finally:
        await backend.close()
    assert servicer.attempts == {"Get": 2}


def test_a_proxy_serves_keys_from_its_grpc_store_and_starts_while_it_is_down(
        tmp_path: Path, upstream_server: UpstreamServer) -> None:
    """A `turnout serve` whose new store is another turnout writes routed keys there; with the upstream down
    it still starts and serves old's keys, failing only the calls routed to the upstream."""
    (tmp_path / "proxy").mkdir()
    (tmp_path / "proxy" / "flags.yaml").write_text("use_new_storage: true\nenabled_for_keys: ['^up:']\n")
    config = write_config(tmp_path / "proxy", old={"type": "memory"},
                          new={"type": "grpc", "target": upstream_server.target, "call_timeout": CALL_TIMEOUT,
                               "connect_timeout": CALL_TIMEOUT})
    once = RetryPolicy(attempts=1)
    with SyncClient(upstream_server.target, timeout=BOUND, retry=once) as upstream:
        with ProxyProcess(config) as proxy, SyncClient(proxy.target, timeout=BOUND, retry=once) as kv:
            kv.set("up:1", {"n": 1})
            assert upstream.get("up:1") == {"n": 1}
        upstream_server.stop()
        with ProxyProcess(config) as proxy, SyncClient(proxy.target, timeout=BOUND, retry=once) as kv:
            kv.set("local", 3)  # it started with its new store down, and serves old's keys
            assert kv.get("local") == 3
            with pytest.raises(Unavailable):
                kv.set("up:2", 2)
            upstream_server.start()
            # The proxy's prober turns the store healthy by itself; the client retries until it has.
            with SyncClient(proxy.target, timeout=BOUND, retry=RetryPolicy(attempts=50, max_backoff=0.2)) as patient:
                patient.set("up:2", 2)
        assert upstream.get("up:2") == 2
