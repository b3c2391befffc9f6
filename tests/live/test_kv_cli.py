"""`turnout kv` against a real proxy: results, --json, and exit codes a shell script can rely on."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from turnout import AsyncClient

from proxy.cli import main
from tests.live.test_client import serving_scripted
from tests.support.proxy_process import ProxyProcess, write_config


def kv(proxy: ProxyProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `turnout kv ARGS` in a subprocess, finding the proxy through its config."""
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
    assert kv(memory_proxy, "set", "user:2", "-", stdin="[1, 2]\n").returncode == 0
    assert json.loads(kv(memory_proxy, "get", "user:2").stdout) == [1, 2]
    listed = kv(memory_proxy, "keys", "user:")
    assert sorted(listed.stdout.split()) == ["user:1", "user:2"]
    assert kv(memory_proxy, "del", "user:1").stdout.strip() == "deleted"
    again = kv(memory_proxy, "del", "user:1")
    assert (again.returncode, again.stdout.strip()) == (0, "was not there")
    missing = kv(memory_proxy, "get", "user:1")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert "not found" in missing.stderr
    assert kv(memory_proxy, "has", "user:1").returncode == 1


def test_json_output(memory_proxy: ProxyProcess) -> None:
    """--json gives a machine-readable result for every action, and a stored null is found."""
    assert json.loads(kv(memory_proxy, "set", "k", "null", "--json").stdout) == {"key": "k", "stored": True}
    assert json.loads(kv(memory_proxy, "get", "k", "--json").stdout) == {"key": "k", "found": True, "value": None}
    absent = kv(memory_proxy, "get", "x", "--json")
    assert (absent.returncode, json.loads(absent.stdout)) == (1, {"key": "x", "found": False})
    assert json.loads(kv(memory_proxy, "has", "k", "--json").stdout) == {"key": "k", "found": True}
    has_absent = kv(memory_proxy, "has", "x", "--json")
    assert (has_absent.returncode, json.loads(has_absent.stdout)) == (1, {"key": "x", "found": False})
    assert json.loads(kv(memory_proxy, "keys", "--json").stdout) == {"prefix": "", "keys": ["k"]}
    assert json.loads(kv(memory_proxy, "del", "k", "--json").stdout) == {"key": "k", "existed": True}


def test_invalid_value_exits_2_with_the_servers_message(memory_proxy: ProxyProcess) -> None:
    """A value that is not JSON is refused by the proxy; the command exits 2 and says why."""
    result = kv(memory_proxy, "set", "k", "{not json")
    assert result.returncode == 2
    assert "INVALID_ARGUMENT" in result.stderr
    assert "not one JSON document" in result.stderr
    assert kv(memory_proxy, "has", "k").returncode == 1


def test_writes_reach_the_legacy_file(embedded_proxy: ProxyProcess) -> None:
    """Under default flags a `kv set` lands in the legacy JSON file, UTF-8 intact, and reads back."""
    assert kv(embedded_proxy, "set", "ключ", "-", stdin='{"snow": "☃"}').returncode == 0
    legacy = json.loads((embedded_proxy.config.parent / "legacy.json").read_text(encoding="utf-8"))
    assert legacy == {"ключ": {"snow": "☃"}}
    got = kv(embedded_proxy, "get", "ключ", "--json")
    assert json.loads(got.stdout) == {"key": "ключ", "found": True, "value": {"snow": "☃"}}


def test_read_only_flags_refuse_writes_with_exit_2(tmp_path: Path) -> None:
    """While the flags say read_only, `kv set` exits 2 with the proxy's reason, and reads go on."""
    (tmp_path / "flags.yaml").write_text("read_only: true\n", encoding="utf-8")
    config = write_config(tmp_path, old={"type": "memory"}, new={"type": "memory"})
    with ProxyProcess(config) as proxy:
        refused = kv(proxy, "set", "k", "1", "--timeout", "2")
        assert refused.returncode == 2
        assert "UNAVAILABLE" in refused.stderr
        assert "read_only" in refused.stderr
        assert kv(proxy, "get", "k").returncode == 1


def test_keys_into_a_closed_pipe_is_quiet(memory_proxy: ProxyProcess) -> None:
    """`turnout kv keys | head -1`: the reader closing the pipe early is no failure and prints no traceback."""

    async def fill() -> None:
        async with AsyncClient(memory_proxy.target) as client:
            for start in range(0, 4000, 250):
                await asyncio.gather(*(client.set(f"key:{i:06}:{'x' * 24}", i) for i in range(start, start + 250)))

    asyncio.run(fill())
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "kv", "keys", "--config", str(memory_proxy.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    assert process.stdout.readline().startswith("key:")
    process.stdout.close()
    try:
        code = process.wait(30)
    finally:
        process.kill()
    stderr = process.stderr.read()
    process.stderr.close()
    assert (code, stderr) == (0, "")


def test_user_and_timeout_reach_the_call(capsys: pytest.CaptureFixture[str]) -> None:
    """--user is sent as x-turnout-user, and --timeout bounds the call (exit 2 on DEADLINE_EXCEEDED)."""
    with serving_scripted() as (target, servicer):
        assert main(["kv", "get", "k", "--target", target, "--user", "checkout"]) == 0
        assert capsys.readouterr().out.strip() == '"ok"'
        assert servicer.users == ["checkout"]
    with serving_scripted(stall=True) as (target, _):
        assert main(["kv", "has", "k", "--target", target, "--timeout", "0.2"]) == 2
        assert "DEADLINE_EXCEEDED" in capsys.readouterr().err


def test_missing_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --target and without a config to find the proxy in, the command exits 2 and says so."""
    assert main(["kv", "get", "k", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err


def test_unreachable_proxy_exits_2() -> None:
    """With no proxy at the target, the command fails clearly instead of hanging."""
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "kv", "get", "k", "--target", "127.0.0.1:1", "--timeout", "1"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "UNAVAILABLE" in result.stderr or "DEADLINE_EXCEEDED" in result.stderr
