"""Starting and stopping a server under test as a subprocess on 127.0.0.1, and reading its CPU time.

The floor is bench/floor_server.py; the proxy is the real `python -m proxy.cli serve` with a config
and flag file written into a fresh folder, so each start sees empty stores.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import yaml

from bench.cases import Server

REPO = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"(?:turnout|floor): serving on (\S+:\d+)")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def write_proxy_config(folder: Path, server: Server) -> Path:
    """The proxy's config and flag file for server, in folder; both listeners on free ports."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "listen": "127.0.0.1:0",
        "flags": "flags.yaml",
        "state_dir": "state",
        "backends": {"old": dict(server.old), "new": dict(server.new)},
        "admin": {"listen": "127.0.0.1:0"},
    }
    config = folder / "turnout.yaml"
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    (folder / "flags.yaml").write_text(yaml.safe_dump(dict(server.flags)) if server.flags else "{}\n")
    return config


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds process pid has used so far (all its threads), or only its thread
    `thread` when given; raises FileNotFoundError when it is gone."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rpartition(")")[2].split()
    # After the command name: state is field 3, so utime (14) and stime (15) sit at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except FileNotFoundError:
        return 0.0  # gone meanwhile


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


class RunningServer:
    """One server subprocess; `target` is the address it serves KeyValue on once started."""

    def __init__(self, server: Server, folder: Path) -> None:
        self.server = server
        self.folder = folder
        self.target = ""
        self.output: list[str] = []
        self._serving = threading.Event()
        self._process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> RunningServer:
        env = {**os.environ, **self.server.env}
        for name, value in self.server.env_defaults.items():
            env.setdefault(name, value)
        if self.server.kind == "floor":
            command = [sys.executable, str(REPO / "bench" / "floor_server.py")]
            out, err = subprocess.PIPE, subprocess.STDOUT
        elif self.server.kind == "proxy":
            config = write_proxy_config(self.folder, self.server)
            command = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--log-level", "WARNING",
                       "--workers", str(self.server.workers)]
            # The proxy announces on stderr; its stdout is where a console span exporter writes.
            out, err = subprocess.DEVNULL, subprocess.PIPE
        else:
            raise ValueError(f"unknown server kind {self.server.kind!r}")
        self._process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
        stream = self._process.stdout if self.server.kind == "floor" else self._process.stderr
        assert stream is not None
        # The reader keeps draining the pipe for the server's whole life, so its logging never blocks it.
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._serving.wait(0.05):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.server.name} did not start:\n" + "".join(self.output[-40:]))
        return self

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if len(self.output) < 10_000:
                self.output.append(line)
            match = SERVING.search(line)
            if match and not self._serving.is_set():
                self.target = match.group(1)
                self._serving.set()

    def cpu_seconds(self) -> float:
        """User + system CPU the server (all its threads, and its workers under --workers) has used so far."""
        return sum(_cpu_seconds(pid) for pid in (self.pid, *_children(self.pid)))

    def stop(self) -> int:
        process, self._process = self._process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
