"""Issue 16, item 2, across connections, on a real `turnout serve`: many connections sending large
requests at once hold the proxy to `limits.max_concurrent_calls` receive limits of memory; calls past
the limit are refused with RESOURCE_EXHAUSTED before their request is read; the proxy serves small
calls afterwards and keeps every acknowledged write."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from bench.request_memory import (
    KINDS,
    LoadResult,
    Sizes,
    fill_keys,
    peak_resident_bytes,
    proxy_config,
    reset_peak,
    resident_bytes,
    run_load,
    stored_keys,
)
from proxy.serving.server import receive_limit
from tests.live.test_hardening_limits import wait_for
from tests.support.proxy_process import ProxyProcess, write_config

MIB = 1024 * 1024
MAX_VALUE_BYTES = 16 * MIB
#: Calls let in at once in the memory test: few, so that the load is mostly refused at the limit.
CALLS_AT_ONCE = 4
#: 32 connections with 2 Sets each in flight: without the limit the proxy took +2.5 GiB of them.
CONNECTIONS = 32
IN_FLIGHT = 2
ROUNDS = 3
#: A call let in holds its request in up to two copies at once (gRPC's receive buffer, then the bytes
#: Python reads it into; a stored value's parse and its store's copy come after the first is freed),
#: each at most the receive limit: measured +341 MiB for 4 calls of this load (about 1.3 receive limits
#: each), +2.5 GiB with no limit.
COPIES_PER_CALL = 2
#: The allocator's own slack on top (arenas of grpc's threads, fragments the load leaves).
MARGIN = 64 * MIB
CALL_TIMEOUT_S = 30.0
#: How long a stalled call's deadline is: the proxy drops it by itself if the test does not.
STALL_DEADLINE = "30S"


@contextmanager
def kv_channel(target: str) -> Iterator[grpc.Channel]:
    """A channel that sends and takes messages of any size, so the proxy (not the client) decides on them."""
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1),
                                                     ("grpc.max_receive_message_length", -1)])
    try:
        yield channel
    finally:
        channel.close()


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _header(name: str, value: str) -> bytes:
    """One HPACK literal header field, not indexed, no Huffman (names and values under 127 bytes)."""
    raw_name, raw_value = name.encode(), value.encode()
    return b"\x00" + bytes([len(raw_name)]) + raw_name + bytes([len(raw_value)]) + raw_value


SETTINGS, HEADERS, DATA, RST_STREAM = 4, 1, 0, 3
ACK, END_HEADERS = 1, 4


def stalled_set(target: str, claimed: int) -> socket.socket:
    """A connection with one Set whose request says it is claimed bytes long and then stops after
    100 bytes: the proxy has let the call in and waits for the rest, so it holds one place."""
    host, _, port = target.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(SETTINGS, 0, 0))
    received = b""
    while True:  # up to the server's own SETTINGS, which must be acknowledged
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("the proxy closed the connection before its SETTINGS")
        received += chunk
        if len(received) >= 9 and received[3] == SETTINGS and not received[4] & ACK:
            break
        if len(received) >= 9:
            received = received[9 + int.from_bytes(received[:3], "big"):]
    fields = [(":method", "POST"), (":scheme", "http"), (":path", "/turnout.kv.v1.KeyValue/Set"),
              (":authority", target), ("content-type", "application/grpc"), ("te", "trailers"),
              ("grpc-timeout", STALL_DEADLINE)]
    message_start = b"\x00" + struct.pack(">I", claimed) + b"x" * 100
    sock.sendall(_frame(SETTINGS, ACK, 0) + _frame(HEADERS, END_HEADERS, 1, b"".join(_header(*f) for f in fields))
                 + _frame(DATA, 0, 1, message_start))
    return sock


def holding_set(target: str, claimed: int, attempts: int = 5) -> socket.socket:
    """A stalled Set that holds a place: grpc.aio decides whether the next call may in as it takes the
    one before, so a stalled call can meet a decision made while an earlier call was still counted and
    be refused at once (its stream answered within moments); such a one is replaced."""
    for _ in range(attempts):
        sock = stalled_set(target, claimed)
        sock.settimeout(0.5)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        if not _stream_ended(received, stream=1):
            return sock  # the call is in, waiting for the rest of its request
        sock.close()
    raise AssertionError(f"no stalled call was let in after {attempts} attempts")


def _stream_ended(frames: bytes, stream: int) -> bool:
    """Whether the server's frames answer the stream (its response HEADERS, or RST_STREAM)."""
    while len(frames) >= 9:
        length, kind = int.from_bytes(frames[:3], "big"), frames[3]
        if int.from_bytes(frames[5:9], "big") & 0x7FFFFFFF == stream and kind in (HEADERS, RST_STREAM):
            return True
        frames = frames[9 + length:]
    return False


def status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and message of call (OK and "" when it succeeds)."""
    try:
        call()
    except grpc.RpcError as failure:
        return failure.code(), failure.details() or ""
    return grpc.StatusCode.OK, ""


def test_a_call_past_max_concurrent_calls_is_refused_and_the_proxy_serves_again_after(tmp_path: Path) -> None:
    """With max_concurrent_calls calls held open mid-request, a large Set and a health check get
    RESOURCE_EXHAUSTED; once they end, small calls and health are served and the stored value is intact."""
    limit = 3
    with ProxyProcess(proxy_config(tmp_path, MAX_VALUE_BYTES, limit)) as proxy, \
            kv_channel(proxy.target) as channel, ExitStack() as held:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        stub.Set(kv_pb2.SetRequest(key="kept", value=b'"before"'), timeout=CALL_TIMEOUT_S)
        for _ in range(limit):
            held.callback(holding_set(proxy.target, claimed=10 * MIB).close)

        def small_set() -> tuple[grpc.StatusCode, str]:
            return status_of(lambda: stub.Set(kv_pb2.SetRequest(key="small", value=b"1"), timeout=CALL_TIMEOUT_S))

        wait_for(lambda: small_set()[0] == grpc.StatusCode.RESOURCE_EXHAUSTED, 10,
                 "the stalled calls taking every place")
        big = b'"' + b"x" * (MAX_VALUE_BYTES - 1024) + b'"'
        code, details = status_of(lambda: stub.Set(kv_pb2.SetRequest(key="kept", value=big), timeout=CALL_TIMEOUT_S))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert details, "a refusal at the limit says why"
        # Health shares grpc's limit (it counts every call on the port): refused too, documented in README.
        code, _ = status_of(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        held.close()  # the stalled calls are cancelled with their connections
        wait_for(lambda: small_set()[0] == grpc.StatusCode.OK, 10, "a small Set served once the places are free")
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reply = stub.Get(kv_pb2.GetRequest(key="kept"), timeout=CALL_TIMEOUT_S)
        assert reply.found
        assert reply.value == b'"before"', "a refused Set changed nothing"


@pytest.mark.parametrize("value", [0, -1, "many", True])
def test_a_max_concurrent_calls_that_is_not_a_positive_count_refuses_to_start(tmp_path: Path, value: object) -> None:
    """`limits.max_concurrent_calls` of 0, a negative number or not a number: exit 2 naming the setting."""
    config = write_config(tmp_path, {"type": "memory"}, {"type": "memory"}, limits={"max_concurrent_calls": value})
    done = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "limits.max_concurrent_calls" in done.stderr


def _assert_each_kind_got_what_it_should(result: LoadResult) -> None:
    allowed = {
        "stored": {"OK", "RESOURCE_EXHAUSTED"},
        "over_value_limit": {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"},
        "over_receive_limit": {"RESOURCE_EXHAUSTED"},
    }
    for (kind, code), count in result.codes.items():
        assert code in allowed[kind], f"{count} {kind} requests got {code}: {sorted(result.details)}"
    assert result.calls == CONNECTIONS * IN_FLIGHT * ROUNDS
    assert set(KINDS) == {kind for kind, _ in result.codes}


@pytest.mark.slow
def test_many_connections_of_large_requests_stay_within_the_limit_s_memory(tmp_path: Path) -> None:
    """32 connections with 2 large Sets each in flight (stored, past max_value_bytes, past the receive
    limit) raise the proxy's peak RSS by at most max_concurrent_calls x 2 receive limits + 64 MiB; calls
    past the limit get RESOURCE_EXHAUSTED, small calls are served afterwards, no acknowledged write is lost."""
    sizes = Sizes(MAX_VALUE_BYTES)
    keys = stored_keys(CONNECTIONS, IN_FLIGHT)
    with ProxyProcess(proxy_config(tmp_path, MAX_VALUE_BYTES, CALLS_AT_ONCE)) as proxy, \
            kv_channel(proxy.target) as channel:
        assert proxy.process is not None
        pid = proxy.process.pid
        # The stores hold a value of the load's size at every key first, so the base counts them.
        asyncio.run(fill_keys(proxy.target, keys, sizes.stored))
        base = resident_bytes(pid)
        reset_peak(pid)
        result = asyncio.run(run_load(proxy.target, CONNECTIONS, IN_FLIGHT, ROUNDS, sizes))
        grown = peak_resident_bytes(pid) - base

        bound = CALLS_AT_ONCE * COPIES_PER_CALL * receive_limit(MAX_VALUE_BYTES) + MARGIN
        assert grown <= bound, (f"peak RSS grew {grown // MIB} MiB over {base // MIB} MiB, past "
                                f"{bound // MIB} MiB for {CALLS_AT_ONCE} calls at once: {dict(result.codes)}")
        _assert_each_kind_got_what_it_should(result)
        refused_at_limit = {details for code, details in result.details if code == "RESOURCE_EXHAUSTED"
                            and "larger than max" not in details}
        assert refused_at_limit, f"no call was refused at the limit: {dict(result.codes)}"

        stub = kv_pb2_grpc.KeyValueStub(channel)
        stub.Set(kv_pb2.SetRequest(key="small", value=b'{"after": true}'), timeout=CALL_TIMEOUT_S)
        assert stub.Get(kv_pb2.GetRequest(key="small"), timeout=CALL_TIMEOUT_S).value == b'{"after": true}'
        for key in keys:
            reply = stub.Get(kv_pb2.GetRequest(key=key), timeout=CALL_TIMEOUT_S)
            tag = result.acknowledged.get(key, "fill")
            assert reply.found, key
            assert reply.value.startswith(b'"' + tag.encode() + b"-"), \
                f"{key}: expected the value of {tag}, got {reply.value[:16]!r}"
            assert len(reply.value) == sizes.stored
