"""What a value and a request may be, held through a real `turnout serve`: bad requests get
INVALID_ARGUMENT and write nothing, and a too-deep stored document is a finding, not a crash."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from proxy.jsonvalue import MAX_DEPTH
from tests.support.proxy_process import ProxyProcess, run_cli, run_turnout, write_config

KV = "/turnout.kv.v1.KeyValue/"
#: Deeper than the limit, and deep enough that a recursive walk of it overflows Python's stack.
STORED_DEPTH = 500


def nested(depth: int) -> bytes:
    """A document of depth nested arrays around a number."""
    return b"[" * depth + b"1" + b"]" * depth


@pytest.fixture
async def channel(memory_proxy: ProxyProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(memory_proxy.target) as channel:
        yield channel


async def raw_call(channel: grpc.aio.Channel, method: str, request: bytes) -> grpc.aio.AioRpcError:
    """The error a unary call with request as its raw bytes ends in."""
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(KV + method)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request, timeout=10)
    return err.value


async def raw_stream(channel: grpc.aio.Channel, request: bytes) -> grpc.aio.AioRpcError:
    """The error a Keys call with request as its raw bytes ends in."""
    call: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(KV + "Keys")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call(request, timeout=10):
            pass
    return err.value


async def stored_keys(channel: grpc.aio.Channel) -> list[str]:
    stub = kv_pb2_grpc.KeyValueStub(channel)
    return [key async for page in stub.Keys(kv_pb2.KeysRequest(prefix=""), timeout=10) for key in page.keys]


@pytest.mark.parametrize("method", ["Get", "Set", "Has", "Delete", "Keys"])
async def test_garbage_protobuf_is_invalid_argument(channel: grpc.aio.Channel, method: str) -> None:
    """Bytes that are no protobuf message get INVALID_ARGUMENT naming the request type, not UNKNOWN."""
    if method == "Keys":
        error = await raw_stream(channel, b"\xff\xff\xff")
    else:
        error = await raw_call(channel, method, b"\xff\xff\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"not a valid turnout.kv.v1.{method}Request" in (error.details() or "")


@pytest.mark.parametrize("method", ["Get", "Set", "Has", "Delete"])
async def test_key_of_invalid_utf8_is_invalid_argument_and_writes_nothing(
    channel: grpc.aio.Channel, method: str
) -> None:
    """A key field holding bytes that are not UTF-8 gets INVALID_ARGUMENT, and nothing is stored."""
    request = b"\x0a\x02\xff\xfe" + (b"\x12\x01" + b"1" if method == "Set" else b"")
    error = await raw_call(channel, method, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid UTF-8" in (error.details() or "")
    assert await stored_keys(channel) == []


async def test_prefix_of_invalid_utf8_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    """A Keys prefix that is not UTF-8 gets INVALID_ARGUMENT, not UNKNOWN."""
    error = await raw_stream(channel, b"\x0a\x01\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid turnout.kv.v1.KeysRequest" in (error.details() or "")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (nested(MAX_DEPTH + 1), f"deeper than {MAX_DEPTH} levels"),
        (b'{"a": 1, "a": 2}', "member 'a' appears more than once"),
        (b'{"x": [{"b": 1, "c": {"d": 1, "d": 2}}]}', "member 'd' appears more than once"),
        (b'"\\ud800"', "lone surrogate"),
        (b'{"\\udc00": 1}', "lone surrogate"),
        (b'[1e400]', "out of range"),
        (b'-1e400', "out of range"),
    ],
)
async def test_value_that_cannot_round_trip_is_invalid_argument_and_writes_nothing(
    channel: grpc.aio.Channel, value: bytes, message: str
) -> None:
    """Set refuses a too-deep document, a duplicate member, a lone surrogate or an overflowing number."""
    stub = kv_pb2_grpc.KeyValueStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Set(kv_pb2.SetRequest(key="k", value=value), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    assert await stored_keys(channel) == []


@pytest.mark.parametrize(
    "value", [nested(MAX_DEPTH), b'"\\ud83d\\ude00"', b'{"a": {"a": 1}, "b": [{"a": 2}]}', b"1e308", b'"\\\\ud800"']
)
async def test_value_at_the_edge_of_the_rules_is_accepted(channel: grpc.aio.Channel, value: bytes) -> None:
    """A document at the depth limit, a surrogate pair, a name repeated in different objects and a large
    finite number are stored and got back equal."""
    stub = kv_pb2_grpc.KeyValueStub(channel)
    await stub.Set(kv_pb2.SetRequest(key="k", value=value), timeout=10)
    got = await stub.Get(kv_pb2.GetRequest(key="k"), timeout=10)
    assert json.loads(got.value) == json.loads(value)


@pytest.fixture
def deep_stores(tmp_path: Path) -> Path:
    """A config whose old store (a legacy file) and new store (a jsondir) hold one too-deep document,
    formatted differently, beside a plain one."""
    deep = json.loads(nested(STORED_DEPTH))
    (tmp_path / "legacy.json").write_text(json.dumps({"deep": deep, "plain": {"n": 1}}, separators=(",", ":")))
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "deep.json").write_text(json.dumps(deep, indent=1))
    (folder / "plain.json").write_text('{"n": 1}')
    return write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                        new={"type": "jsondir", "path": "new"})


def test_tools_handle_a_too_deep_stored_document(deep_stores: Path) -> None:
    """With a stored document deeper than the limit, live verify and status --records answer, and
    validate reports the key as a finding; none of them crashes."""
    with ProxyProcess(deep_stores):
        verified = run_turnout(deep_stores, "verify")
        assert verified["clean"]
        assert verified["mode"] == "live"
        status = run_turnout(deep_stores, "status", "--records")
        records = status["shadow"]["records"]
        assert len({summary["checksum"] for summary in records.values()}) == 1
        found = run_turnout(deep_stores, "validate", expect=1)
        assert found["by_problem"] == {"too_deep": 1}
        assert found["samples"][0]["key"] == "deep"
        assert f"deeper than {MAX_DEPTH} levels" in found["samples"][0]["detail"]


def test_offline_tools_handle_a_too_deep_stored_document(deep_stores: Path) -> None:
    """Proxy stopped: verify, validate of either store and archive finish without a traceback."""
    verified = run_turnout(deep_stores, "verify")
    assert verified["clean"]
    assert verified["mode"] == "offline"
    for store in ("old", "new"):
        found = run_turnout(deep_stores, "validate", "--store", store, expect=1)
        assert found["by_problem"] == {"too_deep": 1}
    archived = run_cli(deep_stores, "archive", str(deep_stores.parent / "old.tzst"), "--json")
    assert archived.returncode == 0, archived.stderr
    assert json.loads(archived.stdout)["records"] == 2
