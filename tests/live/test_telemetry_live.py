"""A collector that accepts connections but never answers costs a real `turnout serve` nothing: calls keep
their speed and answers, and the proxy still stops promptly."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from tests.live.test_shadow_live import seed
from tests.support.proxy_process import ProxyProcess


class Blackhole:
    """A TCP port that accepts every connection and never reads or writes a byte."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self._socket.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


def test_a_collector_that_never_answers_costs_callers_nothing(tmp_path: Path, blackhole: Blackhole) -> None:
    """Every call (with discrepancies to export) meets a 1 s deadline while exports hang, and SIGTERM still exits 0."""
    config = seed(tmp_path)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{blackhole.port}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_SAMPLER": "always_on", "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_BSP_MAX_QUEUE_SIZE": "64",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8", "OTEL_EXPORTER_OTLP_TIMEOUT": "60",  # an export hangs for a minute
    }
    proxy = ProxyProcess(config, env).start()
    try:
        with grpc.insecure_channel(proxy.target) as channel:
            stub = kv_pb2_grpc.KeyValueStub(channel)
            for i in range(400):
                # Each Get of "diff" is also a discrepancy, exported whatever the sampling.
                assert stub.Get(kv_pb2.GetRequest(key="diff"), timeout=1).value == b"1"
                stub.Set(kv_pb2.SetRequest(key=f"k{i}", value=b"1"), timeout=1)
            deadline = time.monotonic() + 10
            while not blackhole.accepted:  # the exporter did reach the collector and is now stuck on it
                assert time.monotonic() < deadline, "the exporter never connected"
                time.sleep(0.05)
            assert stub.Has(kv_pb2.HasRequest(key="k0"), timeout=1).found
    finally:
        code = proxy.stop(timeout=15)  # past 15 s it is killed, and the code is not 0
    assert code == 0, "".join(proxy.output)
    assert "stopped" in "".join(proxy.output)
