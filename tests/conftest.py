"""Fixtures shared by the integration tests: a real `turnout serve` on real files."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from proxy.backends.jsonfile import JsonFileBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.migration.stores import Stores
from proxy.routing.flags import Flags
from proxy.routing.router import Router
from tests.support.otlp_receiver import GrpcReceiver
from tests.support.proxy_process import ProxyProcess, write_config

# The real servers (session-scoped, started on first use) and their per-test spec fixtures.
pytest_plugins = ["tests.support.servers.postgres", "tests.support.servers.redis", "tests.support.servers.upstream"]


@pytest.fixture
def embedded_proxy(tmp_path: Path) -> Iterator[ProxyProcess]:
    """`turnout serve` on the embedded defaults: a legacy JSON file as old and SQLite as new."""
    config = write_config(
        tmp_path,
        old={"type": "jsonfile", "path": "legacy.json"},
        new={"type": "sqlite", "path": "new.sqlite"},
    )
    with ProxyProcess(config) as proxy:
        yield proxy


@pytest.fixture
def memory_proxy(tmp_path: Path) -> Iterator[ProxyProcess]:
    """`turnout serve` on two in-memory backends."""
    config = write_config(tmp_path, old={"type": "memory"}, new={"type": "memory"})
    with ProxyProcess(config) as proxy:
        yield proxy


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    """A legacy JSON file of 300 users as old and an empty SQLite store as new, opened for the migration tools."""
    (tmp_path / "legacy.json").write_text(json.dumps({f"user:{i:03}": {"n": i} for i in range(300)}))
    old = await JsonFileBackend.open(tmp_path / "legacy.json")
    new = await SqliteBackend.open(tmp_path / "new.sqlite")
    yield Stores(old, new, Router(Flags()))
    await old.close()
    await new.close()


@pytest.fixture
def receiver() -> Iterator[GrpcReceiver]:
    """A real OTLP/gRPC trace receiver in the test process, as Jaeger's collector port would be."""
    receiver = GrpcReceiver()
    yield receiver
    receiver.stop()
