"""The Python client: JSON in and out against a real `turnout serve`; errors, deadlines, retries and
streams against a scripted gRPC server that fails or stalls on purpose."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, aclosing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from turnout import (
    AsyncClient,
    DeadlineExceeded,
    InvalidArgument,
    KeyNotFound,
    RetryPolicy,
    SyncClient,
    TurnoutError,
    Unavailable,
)
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from tests.support.proxy_process import ProxyProcess, write_config

FAST_RETRY = RetryPolicy(attempts=5, first_backoff=0.01, max_backoff=0.05)


@pytest.fixture
async def client(memory_proxy: ProxyProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(memory_proxy.target) as kv:
        yield kv


async def test_async_client_round_trip(client: AsyncClient) -> None:
    """Documents go in as Python values and come back equal; null is found, absence is KeyNotFound."""
    await client.set("user:1", {"name": "Ada", "langs": ["en", "fr"], "score": 1.5})
    assert await client.get("user:1") == {"name": "Ada", "langs": ["en", "fr"], "score": 1.5}
    await client.set("nothing", None)
    assert await client.get("nothing") is None
    assert await client.get_raw("nothing") == b"null"
    assert await client.has("nothing")
    with pytest.raises(KeyNotFound) as missing:
        await client.get("absent")
    assert isinstance(missing.value, KeyError)
    assert missing.value.key == "absent"
    assert await client.get_raw("absent") is None
    assert not await client.has("absent")
    assert await client.delete("user:1")
    assert not await client.delete("user:1")
    await client.set_raw("raw", b' {"b": 2, "a": 1} ')
    assert await client.get("raw") == {"a": 1, "b": 2}
    await client.set("ключ ☃", "naïve ☃")
    assert await client.get("ключ ☃") == "naïve ☃"


async def test_async_client_lists_keys_across_pages(client: AsyncClient) -> None:
    """keys() streams every key with the prefix, across server pages, each once."""
    # Bounded concurrency: grpc.aio itself cancels some calls when one channel has thousands in flight.
    for start in range(0, 1500, 250):
        await asyncio.gather(*(client.set(f"k:{i:04}", i) for i in range(start, start + 250)))
    await client.set("other", 1)
    listed = [key async for key in client.keys("k:")]
    assert sorted(listed) == [f"k:{i:04}" for i in range(1500)]
    assert len([key async for key in client.keys()]) == 1501


async def test_invalid_input_raises_invalid_argument(client: AsyncClient) -> None:
    """The server's INVALID_ARGUMENT arrives as InvalidArgument with its message; unencodable values fail locally."""
    with pytest.raises(InvalidArgument, match="not one JSON document") as err:
        await client.set_raw("k", b"{oops")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidArgument, match="must not be empty"):
        await client.get("")
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        await client.set("k", float("nan"))
    assert not await client.has("k")


def test_values_past_four_mebibytes_go_both_ways(tmp_path: Path) -> None:
    """The client sets no size limit of its own: a proxy configured for larger values takes them, a
    large value the old application wrote is read back, and one over the proxy's limit is refused
    by the proxy with its message."""
    big = "x" * (6 * 1024 * 1024)
    (tmp_path / "legacy.json").write_text(json.dumps({"legacy:big": big}))
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"}, new={"type": "memory"},
                          max_value_bytes=8 * 1024 * 1024)
    with ProxyProcess(config) as proxy, SyncClient(proxy.target, timeout=30) as kv:
        assert kv.get("legacy:big") == big
        kv.set("mine:big", [big])
        assert kv.get("mine:big") == [big]
        with pytest.raises(InvalidArgument, match="value: at most 8388608 bytes"):
            kv.set("too:big", [big, big])
        assert not kv.has("too:big")


def test_sync_client_round_trip(memory_proxy: ProxyProcess) -> None:
    """The sync client has the same surface: JSON round trip, null versus absence, keys, delete."""
    with SyncClient(memory_proxy.target, user="checkout") as kv:
        kv.set("cart:42", {"items": [1, 2]})
        kv.set("cart:43", None)
        assert kv.get("cart:42") == {"items": [1, 2]}
        assert kv.get("cart:43") is None
        assert kv.has("cart:43")
        assert sorted(kv.keys("cart:")) == ["cart:42", "cart:43"]
        assert kv.delete("cart:42")
        assert not kv.delete("cart:42")
        with pytest.raises(KeyNotFound):
            kv.get("cart:42")
        with pytest.raises(InvalidArgument, match="not one JSON document"):
            kv.set_raw("cart:44", b"[1,")


@dataclass
class ScriptedKeyValue(kv_pb2_grpc.KeyValueServicer):
    """A real KeyValue server over a dict that fails its first calls with `code`, or stalls, on purpose."""

    failures: int = 0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    stall: bool = False
    fail_after_first_page: bool = False
    pages: list[list[str]] = field(default_factory=lambda: [["a", "b"], ["c"]])
    data: dict[str, bytes] = field(default_factory=lambda: {"k": b'"ok"'})
    calls: int = 0
    users: list[str | None] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    stream_ended: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _attempt(self, context: grpc.ServicerContext, stall: bool = True) -> None:
        with self._lock:
            self.calls += 1
            failing = self.calls <= self.failures
            self.users.append(dict(context.invocation_metadata()).get("x-turnout-user"))  # type: ignore[arg-type]
        if failing:
            context.abort(self.code, "scripted failure")
        if stall and self.stall:
            # Bounded, and released by the fixture's teardown, so no handler outlives its test.
            self.released.wait(10)

    def Get(self, request: kv_pb2.GetRequest, context: grpc.ServicerContext) -> kv_pb2.GetResponse:
        self._attempt(context)
        value = self.data.get(request.key)
        return kv_pb2.GetResponse(found=value is not None, value=value or b"")

    def Set(self, request: kv_pb2.SetRequest, context: grpc.ServicerContext) -> kv_pb2.SetResponse:
        self._attempt(context)
        self.data[request.key] = request.value
        return kv_pb2.SetResponse()

    def Has(self, request: kv_pb2.HasRequest, context: grpc.ServicerContext) -> kv_pb2.HasResponse:
        self._attempt(context)
        return kv_pb2.HasResponse(found=request.key in self.data)

    def Delete(self, request: kv_pb2.DeleteRequest, context: grpc.ServicerContext) -> kv_pb2.DeleteResponse:
        self._attempt(context)
        return kv_pb2.DeleteResponse(existed=self.data.pop(request.key, None) is not None)

    def Keys(self, request: kv_pb2.KeysRequest, context: grpc.ServicerContext) -> Iterator[kv_pb2.KeysResponse]:
        context.add_callback(self.stream_ended.set)
        self._attempt(context, stall=False)
        for number, page in enumerate(self.pages):
            yield kv_pb2.KeysResponse(keys=page)
            if self.fail_after_first_page:
                context.abort(grpc.StatusCode.UNAVAILABLE, "scripted failure mid-stream")
            if number == 0 and self.stall:
                self.released.wait(10)


StartScripted = Callable[..., tuple[str, ScriptedKeyValue]]


@contextmanager
def serving_scripted(**script: object) -> Iterator[tuple[str, ScriptedKeyValue]]:
    """A ScriptedKeyValue (keywords as its fields) served on a free port of 127.0.0.1 until the block ends."""
    servicer = ScriptedKeyValue(**script)  # type: ignore[arg-type]
    server = grpc.server(futures.ThreadPoolExecutor(4))
    kv_pb2_grpc.add_KeyValueServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        servicer.released.set()
        server.stop(None).wait(10)


@pytest.fixture
def scripted() -> Iterator[StartScripted]:
    """Starts scripted servers for a test and stops them after it."""
    with ExitStack() as stack:
        yield lambda **script: stack.enter_context(serving_scripted(**script))


async def test_unavailable_is_retried_with_the_callers_name(scripted: StartScripted) -> None:
    """Two UNAVAILABLE answers are retried; the third attempt's answer is returned, each attempt named."""
    target, servicer = scripted(failures=2)
    async with AsyncClient(target, user="svc", retry=FAST_RETRY) as kv:
        assert await kv.get("k") == "ok"
    assert servicer.calls == 3
    assert servicer.users == ["svc"] * 3


def test_sync_client_retries_writes(scripted: StartScripted) -> None:
    """Set and Delete are retried on UNAVAILABLE too, and no name is sent when none is given."""
    target, servicer = scripted(failures=1)
    with SyncClient(target, retry=FAST_RETRY) as kv:
        kv.set("n", [1, 2])
        assert servicer.data["n"] == b"[1,2]"
        assert kv.delete("n")
    assert servicer.calls == 3
    assert servicer.users == [None] * 3


def test_sync_client_gives_up_after_its_attempts(scripted: StartScripted) -> None:
    """When every attempt is UNAVAILABLE, the client raises Unavailable after its configured attempts."""
    target, servicer = scripted(failures=100)
    with SyncClient(target, retry=RetryPolicy(attempts=3, first_backoff=0.01)) as kv, pytest.raises(Unavailable):
        kv.get("k")
    assert servicer.calls == 3


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, TurnoutError),
        (grpc.StatusCode.PERMISSION_DENIED, TurnoutError),
    ],
)
async def test_only_unavailable_is_retried(
    scripted: StartScripted, code: grpc.StatusCode, error: type[TurnoutError]
) -> None:
    """Any code other than UNAVAILABLE fails at once, as the client exception mapped from it."""
    target, servicer = scripted(failures=100, code=code)
    async with AsyncClient(target, retry=FAST_RETRY) as kv:
        with pytest.raises(error) as err:
            await kv.has("k")
    assert type(err.value) is error
    assert (err.value.code, err.value.message) == (code, "scripted failure")
    assert servicer.calls == 1


async def test_retries_stop_at_the_deadline(scripted: StartScripted) -> None:
    """However many attempts the policy allows, retrying ends within the call's deadline."""
    target, servicer = scripted(failures=10_000)
    many = RetryPolicy(attempts=10_000, first_backoff=0.02, max_backoff=0.02, multiplier=1)
    async with AsyncClient(target, retry=many, timeout=0.5) as kv:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await kv.get("k")
        elapsed = time.monotonic() - started
    assert 1 < servicer.calls < 10_000
    assert elapsed < 0.5 + 1.0  # the deadline plus scheduling slack on a loaded machine


async def test_deadline_is_honoured(scripted: StartScripted) -> None:
    """A call slower than the client's deadline fails with DeadlineExceeded, not a hang."""
    target, _ = scripted(stall=True)
    async with AsyncClient(target, timeout=0.2) as kv:
        with pytest.raises(DeadlineExceeded):
            await kv.get("k")


def test_per_call_timeout_overrides_the_clients(scripted: StartScripted) -> None:
    """A call's own timeout replaces the client's default deadline."""
    target, _ = scripted(stall=True)
    with SyncClient(target, timeout=30) as kv, pytest.raises(DeadlineExceeded):
        kv.get("k", timeout=0.2)


async def test_keys_retried_before_the_first_page(scripted: StartScripted) -> None:
    """A Keys stream that fails before any page is started again, and every key comes once."""
    target, servicer = scripted(failures=2)
    async with AsyncClient(target, retry=FAST_RETRY) as kv:
        assert [key async for key in kv.keys()] == ["a", "b", "c"]
    with SyncClient(target, retry=FAST_RETRY) as kv:
        assert list(kv.keys()) == ["a", "b", "c"]
    assert servicer.calls == 4


async def test_keys_failing_mid_stream_is_not_retried(scripted: StartScripted) -> None:
    """Once a page has been yielded a failure surfaces, so no key is ever yielded twice."""
    target, servicer = scripted(fail_after_first_page=True)
    seen: list[str] = []

    async def read_all(kv: AsyncClient) -> None:
        async for key in kv.keys():
            seen.append(key)

    async with AsyncClient(target, retry=FAST_RETRY) as kv:
        with pytest.raises(Unavailable, match="mid-stream"):
            await read_all(kv)
    assert seen == ["a", "b"]
    assert servicer.calls == 1


async def test_abandoned_keys_stream_is_cancelled(scripted: StartScripted) -> None:
    """A caller that stops reading keys early ends the stream on the server, async and sync."""
    target, servicer = scripted(stall=True)
    # Checked while the client is still open: closing the channel would end the stream anyway.
    async with AsyncClient(target, timeout=30) as kv:
        async with aclosing(kv.keys()) as keys:
            assert await anext(keys) == "a"
        assert await asyncio.to_thread(servicer.stream_ended.wait, 5)
    servicer.stream_ended.clear()
    with SyncClient(target, timeout=30) as sync_kv:
        sync_keys = sync_kv.keys()
        assert next(sync_keys) == "a"
        sync_keys.close()
        assert servicer.stream_ended.wait(5)


async def test_unreachable_proxy_is_unavailable() -> None:
    """With nothing listening, the client retries and then raises Unavailable within its deadline."""
    async with AsyncClient("127.0.0.1:1", timeout=1.0, retry=RetryPolicy(attempts=3, first_backoff=0.01)) as kv:
        with pytest.raises(TurnoutError) as err:
            await kv.get("k")
    assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_backoff_grows_within_its_ceiling() -> None:
    """Each delay lies between 0 and a ceiling that doubles up to max_backoff; there is one per retry."""
    policy = RetryPolicy(attempts=6, first_backoff=0.1, max_backoff=0.5, multiplier=2)
    for _ in range(50):
        delays = list(policy.delays())
        assert len(delays) == 5
        for delay, ceiling in zip(delays, [0.1, 0.2, 0.4, 0.5, 0.5], strict=True):
            assert 0 <= delay <= ceiling
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(attempts=0)


def test_timeouts_must_be_positive() -> None:
    """A zero or negative deadline is refused up front rather than sent."""
    with pytest.raises(ValueError, match="positive"):
        SyncClient("127.0.0.1:1", timeout=0)
    with SyncClient("127.0.0.1:1") as kv, pytest.raises(ValueError, match="positive"):
        kv.has("k", timeout=-1)


def test_client_package_stands_alone() -> None:
    """Importing the client loads nothing of the proxy, so services can install it by itself."""
    probe = "import sys, turnout; print(sorted({m.split('.')[0] for m in sys.modules} & {'proxy', 'yaml'}))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "[]"
