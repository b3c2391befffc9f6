"""Reading the flag file is bounded: only a regular file of at most 1 MiB is read, and the watcher
counts every refusal (and anything unexpected) and goes on watching."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.errors import ConfigError
from proxy.routing import watcher as watcher_module
from proxy.routing.flagbytes import MAX_FLAG_FILE_BYTES, read_flag_file
from proxy.routing.watcher import FlagWatcher

INTERVAL = 0.05
BOUND_S = 5.0


def refusal(path: Path) -> str:
    """The ConfigError read_flag_file gives for path, from a thread given BOUND_S to answer (a read
    that blocks fails the test instead of hanging it)."""
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            outcome.append(read_flag_file(path))
        except BaseException as exc:  # handed to the test, which reports it
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(BOUND_S)
    assert outcome, f"reading {path} blocked"
    assert isinstance(outcome[0], ConfigError), outcome[0]
    return str(outcome[0])


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """A FIFO in the flag file's place is refused at once, naming what it is."""
    path = tmp_path / "flags.yaml"
    os.mkfifo(path)
    assert refusal(path) == f"{path}: not a regular file (a FIFO); a flag file must be one"


def test_link_to_a_device_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A link to /dev/zero (endless bytes) is refused as a character device."""
    path = tmp_path / "flags.yaml"
    path.symlink_to("/dev/zero")
    assert "not a regular file (a character device)" in refusal(path)


def test_directory_is_refused(tmp_path: Path) -> None:
    """A folder where the file should be is refused as a directory."""
    assert "not a regular file (a directory)" in refusal(tmp_path)


def test_file_over_the_cap_is_refused_and_one_at_the_cap_is_read(tmp_path: Path) -> None:
    """1 MiB is read; one byte more is refused, naming the limit and the size."""
    path = tmp_path / "flags.yaml"
    path.write_bytes(b"#" * MAX_FLAG_FILE_BYTES)
    assert len(read_flag_file(path)) == MAX_FLAG_FILE_BYTES
    path.write_bytes(b"#" * (MAX_FLAG_FILE_BYTES + 1))
    assert refusal(path) == (f"{path}: larger than {MAX_FLAG_FILE_BYTES} bytes ({MAX_FLAG_FILE_BYTES + 1} "
                             f"bytes), the most a flag file may be")


def test_link_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    """The ConfigMap layout (flags.yaml -> ..data/flags.yaml) is read through its links."""
    (tmp_path / "real.yaml").write_bytes(b"revision: r\n")
    (tmp_path / "flags.yaml").symlink_to("real.yaml")
    assert read_flag_file(tmp_path / "flags.yaml") == b"revision: r\n"


def test_check_flags_refuses_a_fifo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout check-flags` on a FIFO exits 1 and says why, instead of waiting for a writer."""
    path = tmp_path / "flags.yaml"
    os.mkfifo(path)
    assert main(["check-flags", str(path)]) == 1
    assert "not a regular file (a FIFO)" in capsys.readouterr().err


def test_fifo_at_start_up_falls_back_to_the_last_good_flags(tmp_path: Path) -> None:
    """A watcher started on a FIFO serves the last good flags kept in state_dir and counts the refusal."""
    path = tmp_path / "flags.yaml"
    path.write_text("revision: good\n")
    FlagWatcher(path, tmp_path / "state").load_initial()
    path.unlink()
    os.mkfifo(path)
    watcher = FlagWatcher(path, tmp_path / "state")
    watcher.load_initial()
    status = watcher.status()
    assert (status.revision, status.failures) == ("good", 1)
    assert "a FIFO" in status.last_error


async def until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND_S
    while not check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.01)


async def test_unexpected_error_in_a_read_is_counted_and_watching_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that is no ConfigError, raised while reading, is a refused reload with its type in
    last_error; the next good file is still taken."""
    path = tmp_path / "flags.yaml"
    path.write_text("revision: r1\n")
    watcher = FlagWatcher(path, tmp_path / "state", interval=INTERVAL)
    watcher.load_initial()
    real = watcher_module._read_flags

    def broken(*args: object) -> object:
        raise MemoryError("out of memory")

    monkeypatch.setattr(watcher_module, "_read_flags", broken)
    watcher.start()
    try:
        path.write_text("revision: r2\n")
        await until(lambda: watcher.status().failures == 1)
        assert watcher.status().last_error == f"{path}: cannot read flag file: MemoryError: out of memory"
        monkeypatch.setattr(watcher_module, "_read_flags", real)
        path.write_text("revision: r3\n")
        await until(lambda: watcher.router.flags.revision == "r3")
        assert watcher.status().last_error == ""
    finally:
        await watcher.stop()


async def test_poll_that_raises_does_not_end_the_watcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception escaping a whole poll is counted, and the poller keeps polling."""
    path = tmp_path / "flags.yaml"
    path.write_text("revision: r1\n")
    watcher = FlagWatcher(path, tmp_path / "state", interval=INTERVAL)
    watcher.load_initial()
    real = watcher_module._signature
    calls = 0

    def flaky(watched: Path) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("stat went wrong")
        return real(watched)

    monkeypatch.setattr(watcher_module, "_signature", flaky)
    watcher.start()
    try:
        await until(lambda: watcher.status().failures == 1)
        assert "RuntimeError: stat went wrong" in watcher.status().last_error
        path.write_text("revision: r2\n")
        await until(lambda: watcher.router.flags.revision == "r2")
    finally:
        await watcher.stop()
