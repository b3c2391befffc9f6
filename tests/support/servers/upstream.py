"""A second, real `turnout serve` (on in-memory stores) as the upstream of the `grpc` store type.

One upstream serves the whole session, because a `turnout serve` takes a second or two to start;
each test gets it empty instead, its keys listed and deleted through its own KeyValue API before
the test begins. `upstream_server` is an upstream of the test's own, to stop and start again on the
same port (outage tests), or to pause (SIGSTOP) by its pid.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from proxy.backends.options import read_options
from proxy.backends.registry import store_type
from proxy.config import BackendSpec
from tests.support.proxy_process import ProxyProcess, write_config

#: Deletes the emptying keeps in flight at once.
_DELETES_IN_FLIGHT = 256


def free_port() -> int:
    """A loopback port free right now, for a server that must come back on the same one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def grpc_spec(target: str, **options: Any) -> BackendSpec:
    """The spec of a `grpc` store on target, read as a config's would be (defaults filled in)."""
    entry = store_type("grpc")
    return BackendSpec(type="grpc", options=read_options(entry.options, {"target": target, **options}, Path.cwd()))


class UpstreamServer:
    """One `turnout serve` on two memory stores, on a port of its own that it keeps across stop() and start()."""

    def __init__(self, folder: Path, **config: Any) -> None:
        """config: more fields of its server config (`tls`, say); a flags.yaml already in folder is kept."""
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.folder = folder
        path = write_config(folder, old={"type": "memory"}, new={"type": "memory"}, listen=self.target, **config)
        self.process = ProxyProcess(path)

    @property
    def pid(self) -> int:
        assert self.process.process is not None, "the upstream is not running"
        return self.process.process.pid

    @property
    def running(self) -> bool:
        return self.process.process is not None and self.process.process.poll() is None

    def start(self) -> UpstreamServer:
        self.process.start()
        return self

    def stop(self) -> None:
        if self.process.process is not None and self.process.process.poll() is None:
            # A paused upstream (SIGSTOP) cannot act on SIGTERM until it runs again.
            self.process.process.send_signal(signal.SIGCONT)
        self.process.stop()

    def spec(self, **options: Any) -> BackendSpec:
        return grpc_spec(self.target, **options)


def empty(target: str) -> None:
    """Delete every key of the upstream at target, through its KeyValue API, and check none is left."""
    with grpc.insecure_channel(target) as channel:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        keys = [key for reply in stub.Keys(kv_pb2.KeysRequest(), timeout=30) for key in reply.keys]
        for start in range(0, len(keys), _DELETES_IN_FLIGHT):
            pending = [
                stub.Delete.future(kv_pb2.DeleteRequest(key=key), timeout=30)
                for key in keys[start:start + _DELETES_IN_FLIGHT]]
            for deleted in pending:
                deleted.result()
        left = [key for reply in stub.Keys(kv_pb2.KeysRequest(), timeout=30) for key in reply.keys]
        assert left == [], f"the upstream still holds {len(left)} keys after emptying"


@pytest.fixture(scope="session")
def shared_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamServer]:
    """The session's upstream `turnout serve`, started on first use."""
    server = UpstreamServer(tmp_path_factory.mktemp("upstream")).start()
    yield server
    server.stop()


@pytest.fixture
def upstream_spec(shared_upstream: UpstreamServer) -> BackendSpec:
    """A `grpc` store spec on the session's upstream, emptied for this test."""
    if not shared_upstream.running:  # a test before may have stopped it: it comes back empty
        shared_upstream.start()
    empty(shared_upstream.target)
    return shared_upstream.spec()


@pytest.fixture
def upstream_server(tmp_path: Path) -> Iterator[UpstreamServer]:
    """An upstream of this test's own (stop, start, pause it at will), stopped at the end."""
    server = UpstreamServer(tmp_path / "upstream").start()
    yield server
    server.stop()
