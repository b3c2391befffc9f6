"""The KeyValue handlers' own checks, on an in-process server built as `turnout serve` builds it: each
unary handler parses, bounds the key and validates the value in line, before any dispatcher is asked."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from proxy.config import MAX_KEY_BYTES
from proxy.serving.kvservice import KEY_CLEARED, KV_SERVICE, KeyValueService
from proxy.serving.server import build_server

MAX_VALUE_BYTES = 1024 * 1024
#: Four UTF-8 bytes each: the widest a code point gets, so these keys sit right at the byte limit.
WIDE = "\U0001f600"


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    """A server whose backends are not open yet: a request that passes every check is UNAVAILABLE."""
    server = build_server(KeyValueService(lambda: None, MAX_VALUE_BYTES), health.aio.HealthServicer(),
                          MAX_VALUE_BYTES)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
            yield opened
    finally:
        await server.stop(0)


async def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call  # type: ignore[misc]
    return failed.value.code(), failed.value.details() or ""


@pytest.mark.parametrize("method", ["Get", "Has", "Delete", "Set"])
async def test_a_key_at_the_byte_limit_passes_and_one_byte_more_is_refused(channel: grpc.aio.Channel,
                                                                           method: str) -> None:
    """Keys past the cheap bound (KEY_CLEARED code points) are measured in bytes: 1024 pass, 1028 do not."""
    assert KEY_CLEARED * 4 == MAX_KEY_BYTES
    stub = kv_pb2_grpc.KeyValueStub(channel)

    def call(key: str) -> object:
        if method == "Set":
            return stub.Set(kv_pb2.SetRequest(key=key, value=b"1"), timeout=10)
        request = {"Get": kv_pb2.GetRequest, "Has": kv_pb2.HasRequest, "Delete": kv_pb2.DeleteRequest}[method]
        return getattr(stub, method)(request(key=key), timeout=10)

    code, details = await status_of(call(WIDE * KEY_CLEARED))
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "turnout is starting: backends not open yet")
    code, details = await status_of(call("k" * KEY_CLEARED + "é"))  # past the bound, within the limit
    assert code == grpc.StatusCode.UNAVAILABLE
    code, details = await status_of(call(WIDE * (KEY_CLEARED + 1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"key: at most {MAX_KEY_BYTES} UTF-8 bytes, got {MAX_KEY_BYTES + 4}"
    code, details = await status_of(call(""))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "key: must not be empty")


@pytest.mark.parametrize("method", ["Get", "Has", "Delete", "Set"])
async def test_bytes_that_are_not_the_request_are_invalid_argument(channel: grpc.aio.Channel, method: str) -> None:
    """Garbage is the caller's error, named by the request type it is not."""
    raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{KV_SERVICE}/{method}")
    code, details = await status_of(raw(b"\xff\xff\xff", timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"request: not a valid turnout.kv.v1.{method}Request")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'{"a": 1, "a": "\\u003a"}', "value: member 'a' appears more than once"),
        (b"[1e400]", "value: a number out of range of a double"),
        (b'["\\udbff"]', "value: a string holds a lone surrogate"),
        (b"[1, 2", "value: not one JSON document"),
        (b"1" * (MAX_VALUE_BYTES + 1), f"value: at most {MAX_VALUE_BYTES} bytes"),
    ],
)
async def test_set_refuses_a_value_the_rules_refuse(channel: grpc.aio.Channel, value: bytes, expected: str) -> None:
    """The value's check runs before the dispatcher is asked (which here would answer UNAVAILABLE)."""
    stub = kv_pb2_grpc.KeyValueStub(channel)
    code, details = await status_of(stub.Set(kv_pb2.SetRequest(key="k", value=value), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(expected)


async def test_set_takes_a_value_only_the_exact_check_accepts(channel: grpc.aio.Channel) -> None:
    """An integer too long for a double (which orjson refuses) is a good document: it reaches the dispatcher."""
    stub = kv_pb2_grpc.KeyValueStub(channel)
    code, _ = await status_of(stub.Set(kv_pb2.SetRequest(key="k", value=b"1" + b"0" * 400), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE
