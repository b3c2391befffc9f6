"""The KeyValue service driven over real gRPC against a real `turnout serve` subprocess."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from proxy.config import load_config
from tests.support.proxy_process import ProxyProcess, write_config
from tests.support.slow_start import new_backend_held_open

BIG = 8 * 1024 * 1024


@pytest.fixture
async def stub(memory_proxy: ProxyProcess) -> AsyncIterator[kv_pb2_grpc.KeyValueAsyncStub]:
    async with grpc.aio.insecure_channel(
        memory_proxy.target, options=[("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]
    ) as channel:
        yield kv_pb2_grpc.KeyValueStub(channel)


async def all_keys(stub: kv_pb2_grpc.KeyValueAsyncStub, prefix: str = "") -> list[list[str]]:
    return [list(page.keys) async for page in stub.Keys(kv_pb2.KeysRequest(prefix=prefix))]


async def test_set_get_has_delete_round_trip(stub: kv_pb2_grpc.KeyValueAsyncStub) -> None:
    """A value set is got back equal as JSON, is present, and is gone after delete."""
    await stub.Set(kv_pb2.SetRequest(key="user:1", value=b'{"name": "Ada", "tags": [1, 2.5]}'))
    got = await stub.Get(kv_pb2.GetRequest(key="user:1"))
    assert got.found
    assert json.loads(got.value) == {"name": "Ada", "tags": [1, 2.5]}
    assert (await stub.Has(kv_pb2.HasRequest(key="user:1"))).found
    assert (await stub.Delete(kv_pb2.DeleteRequest(key="user:1"))).existed
    assert not (await stub.Get(kv_pb2.GetRequest(key="user:1"))).found
    assert not (await stub.Delete(kv_pb2.DeleteRequest(key="user:1"))).existed


async def test_stored_null_is_a_value_not_an_absence(stub: kv_pb2_grpc.KeyValueAsyncStub) -> None:
    """A stored null is found by Get and Has, while a missing key is not."""
    await stub.Set(kv_pb2.SetRequest(key="n", value=b"null"))
    got = await stub.Get(kv_pb2.GetRequest(key="n"))
    assert (got.found, json.loads(got.value)) == (True, None)
    assert (await stub.Has(kv_pb2.HasRequest(key="n"))).found
    missing = await stub.Get(kv_pb2.GetRequest(key="absent"))
    assert (missing.found, missing.value) == (False, b"")
    assert not (await stub.Has(kv_pb2.HasRequest(key="absent"))).found


@pytest.mark.parametrize(
    ("key", "message"),
    [("", "must not be empty"), ("k" * 1025, "at most 1024 UTF-8 bytes"), ("é" * 513, "at most 1024 UTF-8 bytes")],
)
async def test_bad_key_is_invalid_argument_and_writes_nothing(
    stub: kv_pb2_grpc.KeyValueAsyncStub, key: str, message: str
) -> None:
    """An empty or over-long key fails with INVALID_ARGUMENT naming the rule, and nothing is stored."""
    for call in (
        stub.Set(kv_pb2.SetRequest(key=key, value=b"1")),
        stub.Get(kv_pb2.GetRequest(key=key)),
        stub.Delete(kv_pb2.DeleteRequest(key=key)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (err.value.details() or "")
    assert await all_keys(stub) == []


async def test_key_of_exactly_1024_bytes_is_accepted(stub: kv_pb2_grpc.KeyValueAsyncStub) -> None:
    """A key of exactly 1024 UTF-8 bytes is within the limit."""
    key = "é" * 512
    await stub.Set(kv_pb2.SetRequest(key=key, value=b"true"))
    assert (await stub.Has(kv_pb2.HasRequest(key=key))).found


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "not one JSON document"),
        (b"{", "not one JSON document"),
        (b"1 2", "not one JSON document"),
        (b"{} []", "not one JSON document"),
        (b"NaN", "not one JSON document"),
        (b"[Infinity]", "not one JSON document"),
        (b"'single'", "not one JSON document"),
        (b'"\xff"', "not UTF-8"),
    ],
)
async def test_value_that_is_not_one_json_document_is_refused(
    stub: kv_pb2_grpc.KeyValueAsyncStub, value: bytes, message: str
) -> None:
    """A value that is not exactly one UTF-8 JSON document fails with INVALID_ARGUMENT and writes nothing."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Set(kv_pb2.SetRequest(key="k", value=value))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    assert not (await stub.Has(kv_pb2.HasRequest(key="k"))).found


async def test_every_kind_of_json_document_is_accepted(stub: kv_pb2_grpc.KeyValueAsyncStub) -> None:
    """Objects, arrays, strings, numbers, booleans and null are all values, whitespace allowed."""
    for i, doc in enumerate([b"{}", b"[]", b'"s"', b"-1.5e3", b"true", b"false", b"null", b' \n{"a": [ ]} ']):
        await stub.Set(kv_pb2.SetRequest(key=f"k{i}", value=doc))
        got = await stub.Get(kv_pb2.GetRequest(key=f"k{i}"))
        assert json.loads(got.value) == json.loads(doc)


async def test_four_mebibyte_value_round_trips(stub: kv_pb2_grpc.KeyValueAsyncStub) -> None:
    """A value of the default 4 MiB limit is stored and read back whole."""
    doc = json.dumps("x" * (4 * 1024 * 1024 - 2)).encode()
    assert len(doc) == 4 * 1024 * 1024
    await stub.Set(kv_pb2.SetRequest(key="big", value=doc))
    assert (await stub.Get(kv_pb2.GetRequest(key="big"))).value == doc


@pytest.mark.parametrize("size", [4 * 1024 * 1024 + 1, 4 * 1024 * 1024 + 100 * 1024, 7 * 1024 * 1024])
async def test_value_over_the_limit_is_refused(stub: kv_pb2_grpc.KeyValueAsyncStub, size: int) -> None:
    """A value over max_value_bytes, by one byte or by megabytes, fails with INVALID_ARGUMENT and the
    limit in its message (not gRPC's own RESOURCE_EXHAUSTED), and nothing is written."""
    doc = json.dumps("x" * (size - 2)).encode()
    assert len(doc) == size
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Set(kv_pb2.SetRequest(key="big", value=doc))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most 4194304 bytes, got {size}" in (err.value.details() or "")
    assert not (await stub.Has(kv_pb2.HasRequest(key="big"))).found


async def test_configured_max_value_bytes_is_enforced(tmp_path: Path) -> None:
    """max_value_bytes from the config bounds the value size."""
    config = write_config(tmp_path, old={"type": "memory"}, new={"type": "memory"}, max_value_bytes=10)
    with ProxyProcess(config) as proxy:
        async with grpc.aio.insecure_channel(proxy.target) as channel:
            stub = kv_pb2_grpc.KeyValueStub(channel)
            await stub.Set(kv_pb2.SetRequest(key="k", value=b"1234567890"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Set(kv_pb2.SetRequest(key="k", value=b"12345678901"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (await stub.Get(kv_pb2.GetRequest(key="k"))).value == b"1234567890"
            # Far past the limit too, the caller hears which limit it broke.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Set(kv_pb2.SetRequest(key="k", value=b"1" * 1_000_000))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "value: at most 10 bytes, got 1000000" in (err.value.details() or "")


async def test_keys_streams_every_matching_key_once_in_pages(stub: kv_pb2_grpc.KeyValueAsyncStub) -> None:
    """Keys returns each key with the prefix exactly once, over several pages for many keys."""
    async def fill(worker: int) -> None:
        for i in range(worker, 2500, 25):
            await stub.Set(kv_pb2.SetRequest(key=f"a:{i:05}", value=b"1"))

    await asyncio.gather(*(fill(worker) for worker in range(25)))
    await stub.Set(kv_pb2.SetRequest(key="b:1", value=b"1"))
    pages = await all_keys(stub, "a:")
    assert len(pages) > 1
    flat = [key for page in pages for key in page]
    assert sorted(flat) == [f"a:{i:05}" for i in range(2500)]
    assert sum(len(page) for page in await all_keys(stub)) == 2501


async def test_health_is_serving_and_reflection_lists_the_services(memory_proxy: ProxyProcess) -> None:
    """The standard health service says SERVING and reflection names KeyValue, so grpcurl works."""
    async with grpc.aio.insecure_channel(memory_proxy.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "turnout.kv.v1.KeyValue"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        names: set[str] = set()
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in reflect.ServerReflectionInfo(iter([request])):
            names.update(s.name for s in reply.list_services_response.service)
        assert {"turnout.kv.v1.KeyValue", "grpc.health.v1.Health"} <= names


async def test_embedded_stores_keep_writes_across_restart(embedded_proxy: ProxyProcess, tmp_path: Path) -> None:
    """Writes through the embedded proxy land in the legacy JSON file and survive a restart."""
    async with grpc.aio.insecure_channel(embedded_proxy.target) as channel:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        await stub.Set(kv_pb2.SetRequest(key="greeting", value=b'{"text": "hello"}'))
        await stub.Set(kv_pb2.SetRequest(key="gone", value=b"1"))
        await stub.Delete(kv_pb2.DeleteRequest(key="gone"))
    assert embedded_proxy.stop() == 0
    assert json.loads((tmp_path / "legacy.json").read_text()) == {"greeting": {"text": "hello"}}
    embedded_proxy.start()
    async with grpc.aio.insecure_channel(embedded_proxy.target) as channel:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        got = await stub.Get(kv_pb2.GetRequest(key="greeting"))
        assert json.loads(got.value) == {"text": "hello"}
        assert not (await stub.Has(kv_pb2.HasRequest(key="gone"))).found


async def test_sigterm_lets_in_flight_writes_finish(embedded_proxy: ProxyProcess, tmp_path: Path) -> None:
    """After SIGTERM the proxy exits 0, and every write it acknowledged is in the legacy file."""
    acknowledged: list[str] = []
    enough = asyncio.Event()

    async def writer(channel: grpc.aio.Channel, n: int) -> None:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        for i in range(1000):
            key = f"w{n}:{i}"
            try:
                await stub.Set(kv_pb2.SetRequest(key=key, value=json.dumps(i).encode()))
            except grpc.aio.AioRpcError:
                return
            acknowledged.append(key)
            if len(acknowledged) >= 50:
                enough.set()

    async with grpc.aio.insecure_channel(embedded_proxy.target) as channel:
        writers = [asyncio.create_task(writer(channel, n)) for n in range(8)]
        await asyncio.wait_for(enough.wait(), 30)
        assert embedded_proxy.process is not None
        embedded_proxy.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*writers)
    assert embedded_proxy.process.wait(30) == 0  # exits by itself, cleanly, after one SIGTERM
    stored = json.loads((tmp_path / "legacy.json").read_text())
    missing = [key for key in acknowledged if key not in stored]
    assert missing == []
    assert len(acknowledged) >= 50


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_health_says_serving_only_once_both_backends_are_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a backend is still opening, health is NOT_SERVING and calls get UNAVAILABLE; then SERVING."""
    config = load_config(write_config(tmp_path, old={"type": "memory"}, new={"type": "jsonfile", "path": "new.json"},
                                      listen=f"127.0.0.1:{free_port()}"))
    async with new_backend_held_open(config, monkeypatch) as start, \
            grpc.aio.insecure_channel(config.listen) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="turnout.kv.v1.KeyValue")
        reply = await health.Check(check, wait_for_ready=True, timeout=20)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await kv_pb2_grpc.KeyValueStub(channel).Set(kv_pb2.SetRequest(key="early", value=b"1"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "backends not open yet" in (err.value.details() or "")
        start.opened.set()
        for _ in range(200):
            reply = await health.Check(check)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.05)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await kv_pb2_grpc.KeyValueStub(channel).Set(kv_pb2.SetRequest(key="later", value=b"1"))
    assert json.loads((tmp_path / "new.json").read_text()) == {}  # nothing reached new before it was open


async def test_sigterm_lets_an_in_flight_stream_finish(memory_proxy: ProxyProcess) -> None:
    """A Keys stream under way when SIGTERM arrives runs to its end; only new calls are turned away."""
    key_size = 1000
    async with grpc.aio.insecure_channel(memory_proxy.target) as channel:
        stub = kv_pb2_grpc.KeyValueStub(channel)

        async def fill(worker: int) -> None:
            for i in range(worker, 4000, 40):
                await stub.Set(kv_pb2.SetRequest(key=f"{i:04}".ljust(key_size, "k"), value=b"1"))

        await asyncio.gather(*(fill(worker) for worker in range(40)))
    # No flow-control window growth: the server can run only a little ahead of what this reader takes,
    # so the stream is still in flight on the server when the signal arrives.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 8 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(memory_proxy.target, options=options) as channel:
        stream = kv_pb2_grpc.KeyValueStub(channel).Keys(kv_pb2.KeysRequest())
        pages = aiter(stream)
        seen = list((await anext(pages)).keys)
        assert memory_proxy.process is not None
        memory_proxy.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        async for page in pages:
            seen.extend(page.keys)
            await asyncio.sleep(0.05)
        assert len(seen) == len(set(seen)) == 4000
    assert memory_proxy.process.wait(30) == 0  # exits by itself, cleanly, after one SIGTERM
