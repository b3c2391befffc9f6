"""`turnout serve` facing bad config, locked stores and a backend that fails under it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from turnout import SyncClient, Unavailable

from tests.support.proxy_process import ProxyProcess, write_config


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=30)


def test_invalid_config_stops_start_up_naming_the_field(tmp_path: Path) -> None:
    """A config with a wrong field exits 2 with a message naming the file and the field."""
    config = write_config(tmp_path, old={"type": "floppy"}, new={"type": "memory"})
    result = serve(config)
    assert result.returncode == 2
    assert "backends.old.type: must be one of" in result.stderr
    assert str(config) in result.stderr


def test_corrupt_legacy_file_stops_start_up_and_is_left_alone(tmp_path: Path) -> None:
    """A legacy file that is not a JSON object keeps the proxy from serving, and is not rewritten."""
    (tmp_path / "legacy.json").write_text("[1, 2")
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"}, new={"type": "memory"})
    result = serve(config)
    assert result.returncode == 2
    assert "legacy.json: not valid JSON" in result.stderr
    assert (tmp_path / "legacy.json").read_text() == "[1, 2"


def test_second_proxy_on_the_same_files_is_refused(tmp_path: Path) -> None:
    """Two proxies never write one legacy file: the second exits saying who holds the lock."""
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json"},
                          new={"type": "sqlite", "path": "new.sqlite"})
    with ProxyProcess(config) as first:
        assert first.process is not None
        second_folder = tmp_path / "second"
        second = write_config(second_folder, old={"type": "jsonfile", "path": str(tmp_path / "legacy.json")},
                              new={"type": "memory"})
        result = serve(second)
        assert result.returncode == 2
        assert f"locked by another turnout process (pid {first.process.pid})" in result.stderr


def test_failing_primary_gives_unavailable_and_acknowledges_nothing(tmp_path: Path) -> None:
    """When the legacy file's folder disappears, writes fail with UNAVAILABLE and reads of old data go on."""
    store = tmp_path / "store"
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "store/legacy.json"}, new={"type": "memory"})
    with ProxyProcess(config) as proxy, SyncClient(proxy.target, timeout=5) as client:
        client.set("kept", 1)
        shutil.rmtree(store)
        with pytest.raises(Unavailable, match="write failed"):
            client.set("lost", 2)
        assert client.get("kept") == 1
        with pytest.raises(KeyError):
            client.get("lost")


@pytest.mark.parametrize("field", ["listen", "admin.listen", "admin.http"])
def test_address_in_use_stops_start_up_naming_the_field(tmp_path: Path, field: str) -> None:
    """A listen address already taken exits 2 with one line naming the field, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        by_field: dict[str, dict[str, Any]] = {
            "listen": {"listen": address},
            "admin.listen": {"admin": {"listen": address}},
            "admin.http": {"admin": {"listen": "127.0.0.1:0", "http": address}},
        }
        extra = by_field[field]
        config = write_config(tmp_path, old={"type": "memory"}, new={"type": "memory"}, **extra)
        result = serve(config)
    assert result.returncode == 2
    assert f"turnout: {field}: cannot listen on {address}" in result.stderr
    assert "Traceback" not in result.stderr
