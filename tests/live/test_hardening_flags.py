"""A flag file cannot freeze or exhaust a running `turnout serve` (issue 16, items 1 and 4): a
backtracking key pattern, a special file (a link to /dev/zero, a FIFO) or a huge file is refused or
matched in linear time, the refusal shows in `turnout status`, and probes, callers and SIGTERM go on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from tests.support.paths import ROOT
from tests.support.proxy_process import ProxyProcess, admin_address, run_turnout, write_config

#: How long any one thing here may take on a shared 2-core machine before it counts as frozen.
BOUND_S = 5.0
#: The shape that backtracks: Python's re takes 2**n steps to find that "a"*n + "!" does not match.
BACKTRACKING = "(a+)+$"
EVIL_KEY = "a" * 1000 + "!"


class Running:
    """A proxy on two memory stores whose flag file is folder/flags.yaml."""

    def __init__(self, folder: Path, config: Path) -> None:
        self.folder = folder
        self.config = config
        self.flags = folder / "flags.yaml"
        self.proxy = ProxyProcess(config)

    def start(self) -> Running:
        self.proxy.start()
        return self

    def reload_state(self) -> admin_pb2.ReloadState:
        """The reload part of the proxy's status, from its admin API."""
        with grpc.insecure_channel(admin_address(self.folder / "state")) as channel:
            reply: admin_pb2.StatusResponse = admin_pb2_grpc.AdminStub(channel).Status(
                admin_pb2.StatusRequest(), timeout=BOUND_S)
        return reply.reload

    def healthy(self) -> bool:
        """Whether the standard health service answers SERVING within the bound."""
        with grpc.insecure_channel(self.proxy.target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=BOUND_S)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def has(self, key: str) -> bool:
        with grpc.insecure_channel(self.proxy.target) as channel:
            reply: kv_pb2.HasResponse = kv_pb2_grpc.KeyValueStub(channel).Has(kv_pb2.HasRequest(key=key),
                                                                             timeout=BOUND_S)
        return reply.found

    def replace_flags(self, make: Callable[[Path], object]) -> None:
        """Make the new flag file beside the old one, then rename it over, as an editor or a deploy does."""
        temp = self.folder / "flags.yaml.new"
        make(temp)
        os.replace(temp, self.flags)


def eventually(check: Callable[[], bool], timeout: float = BOUND_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.05)


def refused(running: Running, failures: int, says: str) -> Callable[[], bool]:
    """A check: the reload failures have reached `failures` and the last error says `says`."""
    def check() -> bool:
        state = running.reload_state()
        return state.failures >= failures and says in state.last_error
    return check


def check_flags(path: Path) -> subprocess.CompletedProcess[str]:
    """`turnout check-flags PATH`, run to the end."""
    return subprocess.run([sys.executable, "-m", "proxy.cli", "check-flags", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=3 * BOUND_S)


def stops_on_sigterm(running: Running) -> None:
    process = running.proxy.process
    assert process is not None
    started = time.monotonic()
    code = running.proxy.stop(signal.SIGTERM, timeout=3 * BOUND_S)
    assert code == 0, "SIGTERM did not stop the proxy cleanly"
    assert time.monotonic() - started < 3 * BOUND_S, "SIGTERM took too long to stop the proxy"


@pytest.fixture
def proxy_folder(tmp_path: Path) -> Path:
    write_config(tmp_path, old={"type": "memory"}, new={"type": "memory"})
    (tmp_path / "flags.yaml").write_text("revision: good\nuse_new_storage: true\n")
    return tmp_path


@pytest.fixture
def running(proxy_folder: Path) -> Iterator[Running]:
    """A started proxy whose flags in force have revision `good`."""
    running = Running(proxy_folder, proxy_folder / "turnout.yaml").start()
    try:
        yield running
    finally:
        running.proxy.stop()


def test_backtracking_key_pattern_cannot_hold_the_proxy(proxy_folder: Path) -> None:
    """With enabled_for_keys ['(a+)+$'], Has of 'a'*1000+'!' answers at once, and meanwhile health,
    other callers and `turnout status` answer and SIGTERM stops the proxy."""
    (proxy_folder / "flags.yaml").write_text(f"revision: re\nuse_new_storage: true\nenabled_for_keys: ['{BACKTRACKING}']\n")
    assert check_flags(proxy_folder / "flags.yaml").returncode == 0
    running = Running(proxy_folder, proxy_folder / "turnout.yaml").start()
    try:
        with ThreadPoolExecutor(4) as pool:
            evil = [pool.submit(running.has, EVIL_KEY) for _ in range(2)]
            assert running.healthy()
            assert running.has("user:1") is False
            assert [call.result(BOUND_S) for call in evil] == [False, False]
        assert run_turnout(running.config, "status", timeout=3 * BOUND_S)["reload"]["revision"] == "re"
        stops_on_sigterm(running)
    finally:
        running.proxy.stop()


def test_pattern_re2_cannot_compile_is_refused_and_last_good_flags_stay(running: Running) -> None:
    """A backreference (which only a backtracking engine can match) is refused by check-flags and by a
    reload, naming the field and line; the flags in force stay."""
    running.replace_flags(lambda path: path.write_text("revision: backref\nenabled_for_keys:\n  - '(a)\\1'\n"))
    eventually(refused(running, 1, "enabled_for_keys[0]"))
    state = running.reload_state()
    assert state.revision == "good"
    assert "flags.yaml:3: enabled_for_keys[0]: regular expression does not compile" in state.last_error
    done = check_flags(running.flags)
    assert done.returncode == 1
    assert "enabled_for_keys[0]" in done.stderr


def test_flag_file_linked_to_dev_zero_is_refused_and_reloads_go_on(running: Running) -> None:
    """A flag file swapped for a link to /dev/zero is refused as not a regular file, without reading
    it; the watcher lives on and takes the next good file."""
    running.replace_flags(lambda path: path.symlink_to("/dev/zero"))
    eventually(refused(running, 1, "not a regular file"))
    assert running.reload_state().revision == "good"
    assert running.healthy()
    running.replace_flags(lambda path: path.write_text("revision: after\n"))
    eventually(lambda: running.reload_state().revision == "after")
    state = running.reload_state()
    assert state.failures == 1
    assert state.last_error == ""


def test_flag_file_swapped_for_a_fifo_is_refused_and_sigterm_stops(running: Running) -> None:
    """A FIFO in place of the flag file never blocks the watcher: it is refused, shown in `turnout
    status`, and SIGTERM still stops the proxy."""
    running.replace_flags(os.mkfifo)
    eventually(refused(running, 1, "a FIFO"))
    doc = run_turnout(running.config, "status", timeout=3 * BOUND_S)["reload"]
    assert doc["revision"] == "good"
    assert "not a regular file" in doc["last_error"]
    assert running.healthy()
    stops_on_sigterm(running)


def test_fifo_flag_file_at_start_up_serves_the_last_good_flags(running: Running) -> None:
    """A proxy started while its flag file is a FIFO becomes healthy with the last good flags and
    shows the refusal."""
    running.proxy.stop()
    running.flags.unlink()
    os.mkfifo(running.flags)
    running.start()
    assert running.healthy()
    state = running.reload_state()
    assert state.revision == "good"
    assert state.failures == 1
    assert "a FIFO" in state.last_error


def test_huge_flag_file_is_refused_without_stalling_traffic(running: Running) -> None:
    """A 50 MB flag file is refused at once for its size, and callers are served meanwhile."""
    line = b"  - caller-00000000\n"

    def huge(path: Path) -> None:
        with path.open("wb") as out:
            out.write(b"revision: huge\nenabled_for_users:\n")
            out.write(line * (50_000_000 // len(line)))

    running.replace_flags(huge)
    eventually(refused(running, 1, "larger than"))
    assert running.healthy()
    assert running.has("user:1") is False
    assert running.reload_state().revision == "good"
