"""`turnout kv` against a real proxy: results, --json, and exit codes a shell script can rely on."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.proxy_process import ProxyProcess


def kv(proxy: ProxyProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "kv", *args, "--config", str(proxy.config)],
        input=stdin, capture_output=True, text=True, timeout=30,
    )


def test_set_get_has_del_keys(memory_proxy: ProxyProcess) -> None:
    """Each action works through the config's listen address and exits as documented."""
    assert kv(memory_proxy, "set", "user:1", '{"name": "Ada"}').returncode == 0
    got = kv(memory_proxy, "get", "user:1")
    assert (got.returncode, json.loads(got.stdout)) == (0, {"name": "Ada"})
    assert kv(memory_proxy, "has", "user:1").returncode == 0
    assert kv(memory_proxy, "set", "user:2", "-", stdin="[1, 2]").returncode == 0
    listed = kv(memory_proxy, "keys", "user:")
    assert sorted(listed.stdout.split()) == ["user:1", "user:2"]
    assert kv(memory_proxy, "del", "user:1").stdout.strip() == "deleted"
    missing = kv(memory_proxy, "get", "user:1")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    assert kv(memory_proxy, "has", "user:1").returncode == 1


def test_json_output(memory_proxy: ProxyProcess) -> None:
    """--json gives a machine-readable result for every action."""
    assert json.loads(kv(memory_proxy, "set", "k", "null", "--json").stdout) == {"key": "k", "stored": True}
    assert json.loads(kv(memory_proxy, "get", "k", "--json").stdout) == {"key": "k", "found": True, "value": None}
    assert json.loads(kv(memory_proxy, "get", "x", "--json").stdout) == {"key": "x", "found": False}
    assert json.loads(kv(memory_proxy, "has", "k", "--json").stdout) == {"key": "k", "found": True}
    assert json.loads(kv(memory_proxy, "keys", "--json").stdout) == {"prefix": "", "keys": ["k"]}
    assert json.loads(kv(memory_proxy, "del", "k", "--json").stdout) == {"key": "k", "existed": True}


def test_invalid_value_exits_2_with_the_servers_message(memory_proxy: ProxyProcess) -> None:
    """A value that is not JSON is refused by the proxy; the command exits 2 and says why."""
    result = kv(memory_proxy, "set", "k", "{not json")
    assert result.returncode == 2
    assert "INVALID_ARGUMENT" in result.stderr
    assert "not one JSON document" in result.stderr


def test_unreachable_proxy_exits_2(memory_proxy: ProxyProcess) -> None:
    """With no proxy at the target, the command fails clearly instead of hanging."""
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "kv", "get", "k", "--target", "127.0.0.1:1", "--timeout", "1"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "UNAVAILABLE" in result.stderr or "DEADLINE_EXCEEDED" in result.stderr
