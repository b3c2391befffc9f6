"""The flag watcher swaps in each valid change within 2 seconds, however the file is replaced."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.routing.router import Override, Route
from proxy.routing.watcher import FlagWatcher, watched_path
from tests.support.proxy_process import configmap, swap

INTERVAL = 0.05


async def wait_for_revision(watcher: FlagWatcher, revision: str, timeout: float = 2.0) -> float:
    """Seconds until the watcher serves revision; fails after timeout (the contract's 2 s)."""
    start = time.monotonic()
    while watcher.router.flags.revision != revision:
        assert time.monotonic() - start < timeout, f"still {watcher.router.flags.revision!r}"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[tuple[FlagWatcher, Path]]:
    path = tmp_path / "flags.yaml"
    path.write_text("revision: r1\n")
    watcher = FlagWatcher(path, tmp_path / "state", interval=INTERVAL)
    watcher.load_initial()
    watcher.start()
    yield watcher, path
    await watcher.stop()


async def test_in_place_rewrite_is_picked_up(watched: tuple[FlagWatcher, Path]) -> None:
    """Rewriting the file in place takes effect."""
    watcher, path = watched
    assert watcher.router.flags.revision == "r1"
    path.write_text("revision: r2\nuse_new_storage: true\n")
    await wait_for_revision(watcher, "r2")
    assert watcher.router.flags.use_new_storage


async def test_rename_over_is_picked_up(watched: tuple[FlagWatcher, Path]) -> None:
    """A new file renamed over the old one takes effect."""
    watcher, path = watched
    temp = path.with_name("flags.yaml.new")
    temp.write_text("revision: r2\n")
    os.replace(temp, path)
    await wait_for_revision(watcher, "r2")


async def test_configmap_symlink_swap_is_picked_up(tmp_path: Path) -> None:
    """A Kubernetes ConfigMap update (the ..data link swapped to a new folder) takes effect."""
    mount = configmap(tmp_path / "mount", "revision: c1\n")
    watcher = FlagWatcher(mount / "flags.yaml", tmp_path / "state", interval=INTERVAL)
    watcher.load_initial()
    watcher.start()
    try:
        assert watcher.router.flags.revision == "c1"
        swap(mount, "..v2", "revision: c2\n")
        await wait_for_revision(watcher, "c2")
    finally:
        await watcher.stop()


async def test_configmap_swap_is_picked_up_from_an_already_resolved_path(tmp_path: Path) -> None:
    """Given the resolved path (the config resolves relative paths: mount/..v1/flags.yaml), the watcher
    still follows the ..data swap, because it watches the ConfigMap's visible link instead."""
    mount = configmap(tmp_path / "mount", "revision: c1\n")
    resolved = (mount / "flags.yaml").resolve()
    assert resolved == (mount / "..v1" / "flags.yaml").resolve()
    watcher = FlagWatcher(resolved, tmp_path / "state", interval=INTERVAL)
    assert watcher.path == mount.resolve() / "flags.yaml"
    watcher.load_initial()
    watcher.start()
    try:
        swap(mount, "..v2", "revision: c2\n")
        await wait_for_revision(watcher, "c2")
        swap(mount, "..v3", "revision: c3\n")
        await wait_for_revision(watcher, "c3")
    finally:
        await watcher.stop()


def test_watched_path_leaves_other_paths_alone(tmp_path: Path) -> None:
    """Only a file inside the current ..data target of a ConfigMap volume is redirected."""
    plain = tmp_path / "..odd" / "flags.yaml"
    plain.parent.mkdir()
    plain.write_text("{}\n")
    assert watched_path(plain) == plain  # a folder named ..something, but no ..data link to it
    assert watched_path(tmp_path / "flags.yaml") == tmp_path / "flags.yaml"
    mount = configmap(tmp_path / "mount", "{}\n")
    swap(mount, "..v2", "{}\n")
    stale = (mount / "..v1" / "flags.yaml").resolve()
    assert watched_path(stale) == stale  # ..data no longer points at ..v1: nothing to follow


async def test_invalid_file_is_refused_and_recorded(watched: tuple[FlagWatcher, Path]) -> None:
    """A broken file leaves the last good flags in force and is shown in the reload status."""
    watcher, path = watched
    path.write_text("revision: bad\ntraffic_percentage: {read: 200}\n")
    deadline = time.monotonic() + 2
    while watcher.status().failures == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    status = watcher.status()
    assert watcher.router.flags.revision == "r1"
    assert "traffic_percentage.read" in status.last_error
    assert status.last_attempt > status.last_success > 0
    path.write_text("revision: r3\n")
    await wait_for_revision(watcher, "r3")
    assert watcher.status().last_error == ""
    assert watcher.status().failures == 1


async def test_half_written_file_is_not_read_until_complete(watched: tuple[FlagWatcher, Path]) -> None:
    """A file written in two parts within one poll is read only once whole, so no failure is recorded."""
    watcher, path = watched
    with path.open("w") as out:
        out.write("revision: r4\ntraffic_percentage: {read:")
        out.flush()
        await asyncio.sleep(INTERVAL / 2)
        out.write(" 5}\n")
    await wait_for_revision(watcher, "r4")
    assert watcher.router.flags.read_percentage == 5
    assert watcher.status().failures == 0


async def test_restart_with_a_broken_file_keeps_the_last_good_flags(tmp_path: Path) -> None:
    """A proxy restarting while the file is broken serves the last good flags, not the defaults."""
    path = tmp_path / "flags.yaml"
    path.write_text("revision: good\nuse_new_storage: true\n")
    FlagWatcher(path, tmp_path / "state").load_initial()
    path.write_text("revision: [broken\n")
    restarted = FlagWatcher(path, tmp_path / "state")
    restarted.load_initial()
    assert restarted.router.flags.revision == "good"
    assert restarted.router.flags.use_new_storage
    assert "not valid YAML" in restarted.status().last_error


async def test_override_survives_a_restart_until_cleared(tmp_path: Path) -> None:
    """An override is persisted in state_dir and stands above the file until cleared."""
    path = tmp_path / "flags.yaml"
    path.write_text("use_new_storage: true\n")
    watcher = FlagWatcher(path, tmp_path / "state")
    watcher.load_initial()
    watcher.set_override(Override(Route.OLD, "incident 42", 1.0))
    again = FlagWatcher(path, tmp_path / "state")
    again.load_initial()
    assert again.override == Override(Route.OLD, "incident 42", 1.0)
    again.set_override(None)
    assert FlagWatcher(path, tmp_path / "state").override is None


async def test_default_poll_picks_up_a_change_within_two_seconds(tmp_path: Path) -> None:
    """With the shipped poll interval, a renamed-over file is in force within the contract's 2 s."""
    path = tmp_path / "flags.yaml"
    path.write_text("revision: d1\n")
    watcher = FlagWatcher(path, tmp_path / "state")
    watcher.load_initial()
    watcher.start()
    try:
        temp = tmp_path / "flags.yaml.tmp"
        temp.write_text("revision: d2\n")
        os.replace(temp, path)
        assert await wait_for_revision(watcher, "d2") < 2.0
    finally:
        await watcher.stop()


def stepped(tmp_path: Path, text: str) -> tuple[FlagWatcher, Path]:
    """A watcher driven poll by poll through check(), with no background task."""
    path = tmp_path / "flags.yaml"
    path.write_text(text)
    watcher = FlagWatcher(path, tmp_path / "state")
    watcher.load_initial()
    return watcher, path


def rewrite(path: Path, text: str) -> None:
    """Replace the file's contents and make sure its stat differs even on a coarse clock."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


async def test_a_failed_read_is_retried_before_it_counts(tmp_path: Path) -> None:
    """An unparsable file is read once more on the next poll; only then is the failure declared."""
    watcher, path = stepped(tmp_path, "revision: s1\n")
    rewrite(path, "revision: s2\ntraffic_percentage: {read:")
    await watcher.check()  # changed: wait for it to settle
    await watcher.check()  # settled: read, fails, retry due
    assert (watcher.status().failures, watcher.router.flags.revision) == (0, "s1")
    await watcher.check()  # the retry fails too: refused
    assert (watcher.status().failures, watcher.router.flags.revision) == (1, "s1")
    await watcher.check()  # nothing changed since: no further attempt, no further failure
    assert watcher.status().failures == 1


async def test_a_file_completed_during_the_retry_window_is_taken_without_failure(tmp_path: Path) -> None:
    """A half-written file that becomes whole before the retry is swapped in and no failure is counted."""
    watcher, path = stepped(tmp_path, "revision: s1\n")
    rewrite(path, "revision: s2\ntraffic_percentage: {read:")
    await watcher.check()
    await watcher.check()  # read half-written: retry due
    rewrite(path, "revision: s2\ntraffic_percentage: {read: 5}\n")
    await watcher.check()  # changed again: settle first
    await watcher.check()
    assert watcher.router.flags.revision == "s2"
    assert watcher.router.flags.read_percentage == 5
    assert (watcher.status().failures, watcher.status().last_error) == (0, "")


async def test_a_touch_does_not_rebuild_the_router(tmp_path: Path) -> None:
    """A changed stat with the same bytes keeps the same router object (the content hash decides)."""
    watcher, path = stepped(tmp_path, "revision: t1\n")
    router = watcher.router
    loaded = watcher.status().last_success
    rewrite(path, "revision: t1\n")
    await watcher.check()
    await watcher.check()
    assert watcher.router is router
    assert watcher.status().last_success > loaded > 0  # the touch was read, and found unchanged


async def test_a_deleted_file_keeps_the_last_good_flags(tmp_path: Path) -> None:
    """A flag file that disappears is a failure to read, and the flags in force stay."""
    watcher, path = stepped(tmp_path, "revision: g1\nuse_new_storage: true\n")
    path.unlink()
    for _ in range(3):
        await watcher.check()
    assert watcher.router.flags.revision == "g1"
    assert "cannot read flag file" in watcher.status().last_error


async def test_set_override_rebuilds_the_router_above_the_file(tmp_path: Path) -> None:
    """An override routes everything to its backend with reason override; clearing it restores the file's rules."""
    from proxy.routing.router import Op, Reason

    watcher, path = stepped(tmp_path, "revision: o1\nuse_new_storage: true\nenabled_for_users: [u]\n")
    assert watcher.router.route(Op.GET, "k", "u").primary == Route.NEW
    watcher.set_override(Override(Route.OLD, "incident", 1.0))
    decision = watcher.router.route(Op.GET, "k", "u")
    assert (decision.primary, decision.reason) == (Route.OLD, Reason.OVERRIDE)
    assert watcher.router.flags.revision == "o1"
    rewrite(path, "revision: o2\nuse_new_storage: true\nenabled_for_users: [u]\n")
    await watcher.check()
    await watcher.check()
    assert watcher.router.flags.revision == "o2"
    assert watcher.router.route(Op.GET, "k", "u").reason == Reason.OVERRIDE  # the override outlives a reload
    watcher.set_override(None)
    assert watcher.router.route(Op.GET, "k", "u").reason == Reason.USER
