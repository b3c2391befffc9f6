"""Starts the real `turnout serve` as a subprocess for integration tests, and stops it; runs the other
`turnout` commands against it; lays out the files it reads (its config, a ConfigMap volume)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from proxy.statedir import ADMIN_ADDRESS_FILE, HTTP_ADDRESS_FILE, read_address, worker_dir
from tests.support.paths import ROOT

SERVING = re.compile(r"turnout: serving on (\S+:\d+)")
START_TIMEOUT_S = 20.0


def write_config(folder: Path, old: Mapping[str, Any], new: Mapping[str, Any], **extra: Any) -> Path:
    """A server config in folder, its KeyValue service, admin API and HTTP side each on a free port;
    extra fields are merged in (an `admin` given replaces the whole admin section)."""
    folder.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "flags": "flags.yaml",
        "state_dir": "state",
        "backends": {"old": dict(old), "new": dict(new)},
        "admin": {"listen": "127.0.0.1:0", "http": "127.0.0.1:0"},
        **extra,
    }
    path = folder / "turnout.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    flags = folder / "flags.yaml"
    if not flags.exists():
        flags.write_text("{}\n", encoding="utf-8")
    return path


def admin_address(state_dir: Path, worker: int = 0) -> str:
    """The address a running proxy's admin API took (worker N's under `--workers`), from state_dir."""
    return _written(state_dir, worker, ADMIN_ADDRESS_FILE)


def http_address(state_dir: Path, worker: int = 0) -> str:
    """The address a running proxy's HTTP side took (worker N's under `--workers`), from state_dir."""
    return _written(state_dir, worker, HTTP_ADDRESS_FILE)


def _written(state_dir: Path, worker: int, name: str) -> str:
    address = read_address(worker_dir(state_dir, worker), name)
    assert address, f"no {name} in {worker_dir(state_dir, worker)}: the proxy has not written it"
    return address


def get_page(address: str, path: str, timeout: float = 5) -> str:
    """The body of GET path from an HTTP side (an HTTP error raises, with its status)."""
    with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as reply:
        body: bytes = reply.read()
    return body.decode()


def configmap(mount: Path, text: str) -> Path:
    """A Kubernetes ConfigMap volume at mount holding flags.yaml: flags.yaml -> ..data/flags.yaml -> ..v1/."""
    (mount / "..v1").mkdir(parents=True)
    (mount / "..v1" / "flags.yaml").write_text(text)
    (mount / "..data").symlink_to("..v1")
    (mount / "flags.yaml").symlink_to("..data/flags.yaml")
    return mount


def swap(mount: Path, version: str, text: str) -> None:
    """What the kubelet does on a ConfigMap update: a new folder, then the ..data link renamed over."""
    (mount / version).mkdir()
    (mount / version / "flags.yaml").write_text(text)
    (mount / "..data_tmp").symlink_to(version)
    os.replace(mount / "..data_tmp", mount / "..data")


def cli_command(config: Path, *args: str) -> list[str]:
    """`turnout ARGS --config CONFIG`, run as `python -m proxy.cli` (start it from ROOT)."""
    return [sys.executable, "-m", "proxy.cli", *args, "--config", str(config)]


def run_cli(config: Path, *args: str, env: Mapping[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `turnout ARGS --config CONFIG` to the end from ROOT, env added to ours; output captured as text."""
    return subprocess.run(cli_command(config, *args), cwd=ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def run_turnout(config: Path, *args: str, env: Mapping[str, str] | None = None, expect: int = 0,
                timeout: float = 120) -> dict[str, Any]:
    """The JSON answer of `turnout ARGS --json`, once it has exited with expect."""
    done = run_cli(config, *args, "--json", env=env, timeout=timeout)
    assert done.returncode == expect, f"turnout {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


class ProxyProcess:
    """One `turnout serve` subprocess; `target` is its KeyValue address once started."""

    def __init__(self, config: Path, env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> None:
        self.config = config
        self.args = tuple(args)
        self.env = {**os.environ, **(env or {})}
        self.target = ""
        self.output: list[str] = []
        self._serving = threading.Event()
        self.process: subprocess.Popen[str] | None = None
        self._reader = threading.Thread()

    def start(self) -> ProxyProcess:
        self._serving.clear()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(self.config), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self._reader = threading.Thread(target=self._read_output, args=(self.process,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._serving.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("turnout serve did not start:\n" + "".join(self.output))
        return self

    def _read_output(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.output.append(line)
            match = SERVING.search(line)
            if match:
                self.target = match.group(1)
                self._serving.set()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send sig and wait for the exit; returns the exit code."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(sig)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        self._reader.join(5)
        if process.stderr is not None:
            process.stderr.close()
        self.process = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
