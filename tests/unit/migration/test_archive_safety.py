"""Where an archive may land: never over an existing file unless forced, never through a planted
temporary file, never over what a store or the proxy keeps; and nothing left behind when it fails."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.backends.base import Item
from proxy.backends.memory import MemoryBackend
from proxy.durable import replace_file, temp_name
from proxy.migration import archive as archives


async def filled() -> MemoryBackend:
    backend = MemoryBackend()
    await backend.set_many([("a", b"1"), ("b", b'{"x": 2}')])
    return backend


async def test_an_archive_is_created_private_and_leaves_no_partial_file(tmp_path: Path) -> None:
    """The archive (every value of the store) is 0600 whatever the umask, and OUT.partial is gone."""
    out = tmp_path / "a.tzst"
    previous = os.umask(0)
    try:
        summary = await archives.archive(await filled(), out, "old:memory")
    finally:
        os.umask(previous)
    assert summary.records == 2
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert list(tmp_path.iterdir()) == [out]


async def test_a_failing_archive_removes_its_partial_file_and_leaves_out_alone(tmp_path: Path) -> None:
    """A store that fails mid-scan fails the archive: the existing OUT (forced) is untouched, no partial left."""

    class Failing(MemoryBackend):
        async def scan(self, prefix: str = "", page_size: int = 1000) -> AsyncIterator[list[Item]]:
            yield [("a", b"1")]
            raise OSError("disk gone")

    out = tmp_path / "a.tzst"
    out.write_bytes(b"earlier")
    with pytest.raises(OSError, match="disk gone"):
        await archives.archive(Failing(), out, "old:memory", force=True)
    assert out.read_bytes() == b"earlier"
    assert list(tmp_path.iterdir()) == [out]


def test_check_out_refuses_protected_paths_through_links_and_folders_inside(tmp_path: Path) -> None:
    """A protected file, a link to it, a path inside a protected tree and a folder are refused; force
    changes none of it; an unrelated new path passes."""
    store = tmp_path / "legacy.json"
    store.write_text("{}")
    (tmp_path / "docs").mkdir()
    (tmp_path / "link").symlink_to(store)
    protected = [archives.Protected(store, "the old store"), archives.Protected(tmp_path / "docs", "new", tree=True)]
    for out in (store, tmp_path / "link", tmp_path / "docs" / "x.tzst", tmp_path / "docs"):
        with pytest.raises(archives.ArchiveRefused):
            archives.check_out(out, protected, force=True)
    archives.check_out(tmp_path / "fresh.tzst", protected)


def test_replacing_a_file_never_follows_a_planted_temporary_link(tmp_path: Path) -> None:
    """A symlink (or a stale file) at the temporary name is unlinked, not written through."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "store.json"
    temp_name(target).symlink_to(victim)
    replace_file(target, b"{}")
    assert victim.read_text() == "keep"
    assert target.read_bytes() == b"{}"
    assert not temp_name(target).exists()
