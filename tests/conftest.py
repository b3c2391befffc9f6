"""Fixtures shared by the integration tests: a real `turnout serve` on real files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy_process import ProxyProcess, write_config


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
