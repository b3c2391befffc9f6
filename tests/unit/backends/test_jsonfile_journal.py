"""The legacy JSON file with its journal on (flush_interval set): writes durable in the journal, the
file rewritten whole now and then, a crash's journal replayed, the old application's changes kept."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from proxy.backends import open_backend
from proxy.backends.jsonfile import JsonFileBackend
from proxy.backends.jsonjournal import (
    Entry,
    JournalDamaged,
    JournalWriter,
    encode_entry,
    encode_flushed,
    journal_path,
    read_file_and_journal,
    read_journal,
)
from proxy.backends.legacyfile import MemberNames, read_store, render_store, signature
from proxy.cli import main as turnout
from proxy.config import BackendSpec
from proxy.durable import replace_file
from proxy.errors import BackendUnavailable
from proxy.migration.validate import validate_jsonfile
from tests.support.crashes import acknowledged_before_kill
from tests.support.paths import ROOT
from tests.support.proxy_process import write_config
from tests.unit.backends import test_conformance as conformance
from tests.unit.backends.conftest import Opener

#: Long enough that no rewrite happens during a test unless it waits for one or closes the store.
NEVER = 3600.0

# The conformance suite runs on the "jsonfile-journal" kind (tests/unit/backends/conftest.py), but
# its durability tests take DURABLE_TYPES only: its SIGKILL test hands the kind to crash_writer.py as
# a store type. The journal's own SIGKILL test is below (with deletes); the others run here.
DurabilityCheck = Callable[[str, Opener, Path], Awaitable[None]]
DURABILITY: dict[str, DurabilityCheck] = {
    "a missing path is created": lambda kind, _, folder: conformance.test_opening_a_missing_path_creates_the_store(
        kind, folder),
    "a store open elsewhere is refused": lambda _, opener, __:
        conformance.test_a_store_open_elsewhere_is_refused_until_closed(opener),
    "durable across close and reopen": lambda _, opener, __: conformance.test_durable_across_close_and_reopen(opener),
    "close flushes writes under way": lambda _, opener, __: conformance.test_close_flushes_writes_under_way(opener),
}


@pytest.mark.parametrize("check", DURABILITY.values(), ids=DURABILITY.keys())
@pytest.mark.parametrize("kind", ["jsonfile-journal"])
async def test_the_suite_s_durability_tests_hold_with_the_journal_on(check: DurabilityCheck, kind: str,
                                                                    opener: Opener, tmp_path: Path) -> None:
    """Each durability test of the conformance suite passes on the jsonfile store with its journal on."""
    await check(kind, opener, tmp_path)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def on_disk(path: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


def crash_copy(path: Path, folder: Path) -> Path:
    """The store's files as a crash right now would leave them (file and journal), in another folder."""
    folder.mkdir()
    for source in (path, journal_path(path)):
        if source.exists():
            shutil.copy2(source, folder / source.name)
    return folder / path.name


async def test_a_write_is_durable_in_the_journal_before_the_file_is_rewritten(tmp_path: Path) -> None:
    """With a long interval the file is untouched after Sets, yet a crash copy holds every acknowledged write."""
    path = tmp_path / "legacy.json"
    path.write_text('{"old": 1}')
    backend = await JsonFileBackend.open(path, flush_interval=NEVER)
    await backend.set("a", b'{"x": 1}')
    await backend.set_many([("b", b"2"), ("c", b"3")])
    assert await backend.delete("old") is True
    assert await backend.delete("never") is False
    assert await backend.get("a") == b'{"x":1}' or await backend.get("a") == b'{"x": 1}'
    assert on_disk(path) == {"old": 1}
    assert backend.rewrites == 0
    copy = crash_copy(path, tmp_path / "crash")
    reopened = await JsonFileBackend.open(copy)
    assert {key: await reopened.get(key) for key in ("a", "b", "c", "old")} == {
        "a": b'{"x": 1}', "b": b"2", "c": b"3", "old": None}
    await reopened.close()
    # The replay wrote the file, and without a journal configured the journal is gone.
    assert on_disk(copy) == {"a": {"x": 1}, "b": 2, "c": 3}
    assert not journal_path(copy).exists()
    await backend.close()


async def test_close_rewrites_the_file_and_removes_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path, flush_interval=NEVER)
    await backend.set("a", b"1")
    await backend.set("b", b"2")
    await backend.delete("b")
    await backend.close()
    assert on_disk(path) == {"a": 1}
    assert not journal_path(path).exists()


async def test_the_file_is_rewritten_within_the_interval_and_the_journal_rotated(tmp_path: Path) -> None:
    """After a rewrite the file holds the writes and the journal holds none of them."""
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path, flush_interval=0.05)
    await backend.set_many([(f"k{i}", str(i).encode()) for i in range(100)])

    async def flushed() -> bool:
        return backend.unflushed == 0

    await eventually(flushed)
    assert on_disk(path) == {f"k{i}": i for i in range(100)}
    contents = read_journal(journal_path(path))
    assert contents is not None
    assert contents.entries == []
    assert contents.base == signature(path.stat())
    assert backend.rewrites >= 1
    await backend.close()


async def test_concurrent_writers_share_journal_appends(tmp_path: Path) -> None:
    """Fifty concurrent Sets cost far fewer than fifty appends (one fsync each), and all are journaled."""
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path, flush_interval=NEVER)
    await asyncio.gather(*(backend.set(f"k{i}", str(i).encode()) for i in range(50)))
    assert backend.journal_appends <= 5
    contents = read_journal(journal_path(path))
    assert contents is not None
    assert {entry.key for entry in contents.entries} == {f"k{i}" for i in range(50)}
    await backend.close()


async def test_old_application_change_to_another_key_and_unflushed_write_both_survive(tmp_path: Path) -> None:
    """The old app changes A while turnout's write to B is still only in the journal: both are served
    and both are in the file after the next rewrite."""
    path = tmp_path / "legacy.json"
    path.write_text('{"A": "old", "B": "old"}')
    backend = await JsonFileBackend.open(path, flush_interval=NEVER)
    await backend.set("B", b'"turnout"')
    # The old application saves its whole index: it still has B's old value.
    replace_file(path, b'{"A": "old app", "B": "old"}')

    async def seen() -> bool:
        return await backend.get("A") == b'"old app"'

    await eventually(seen)
    assert await backend.get("B") == b'"turnout"'
    await backend.close()
    assert on_disk(path) == {"A": "old app", "B": "turnout"}


def set_mtime(path: Path, wall_ns: int) -> None:
    """Date the old application's save (its signature still changes: the inode is new)."""
    os.utime(path, ns=(wall_ns, wall_ns))


async def test_when_both_changed_a_key_the_later_write_wins_and_a_delete_stays(tmp_path: Path) -> None:
    """C: turnout wrote it, then the old app changed it: the old app's later value wins, and turnout's
    superseded write is counted. K: the old app's save is dated before turnout's write of K: turnout
    wins. D: deleted by turnout, the old app's file still has its old value: it stays deleted."""
    path = tmp_path / "legacy.json"
    path.write_text('{"C": 0, "D": 0, "K": 0}')
    backend = await JsonFileBackend.open(path, flush_interval=NEVER)
    before_turnout = time.time_ns() - 10**9
    await backend.set("K", b'"turnout"')
    await backend.set("C", b'"turnout"')
    assert await backend.delete("D") is True
    saved = path.with_name("saved.json")
    replace_file(saved, b'{"C": "old app", "D": 0, "K": "old app", "E": "new"}')
    set_mtime(saved, max(time.time_ns(), before_turnout + 2 * 10**9))  # after turnout's writes
    os.replace(saved, path)

    async def seen() -> bool:
        return await backend.get("E") is not None

    await eventually(seen)
    assert await backend.get("C") == b'"old app"'
    assert await backend.get("K") == b'"old app"'
    assert await backend.get("D") is None
    assert backend.superseded == 2
    await backend.set("K", b'"turnout again"')
    replace_file(saved, b'{"C": "old app", "K": "old app, saved earlier", "E": "newer"}')
    set_mtime(saved, before_turnout)
    os.replace(saved, path)

    async def seen_again() -> bool:
        return await backend.get("E") == b'"newer"'

    await eventually(seen_again)
    assert await backend.get("K") == b'"turnout again"'
    assert backend.superseded == 2
    await backend.close()
    assert on_disk(path) == {"C": "old app", "K": "turnout again", "E": "newer"}


async def test_after_a_crash_the_old_application_s_later_change_is_merged_the_same_way(tmp_path: Path) -> None:
    """The old application changes the file while turnout is down after a crash: at open, keys only
    turnout wrote keep turnout's value, a key the old app changed later takes the old app's, and a key
    turnout deleted stays deleted."""
    path = tmp_path / "legacy.json"
    path.write_text('{"A": 0, "B": 0, "D": 0}')
    backend = await JsonFileBackend.open(path, flush_interval=NEVER)
    await backend.set("A", b'"turnout"')
    await backend.set("B", b'"turnout"')
    await backend.delete("D")
    copy = crash_copy(path, tmp_path / "crash")
    await backend.close()
    replace_file(copy, b'{"A": 0, "B": "old app", "D": 0, "F": "old app"}')  # later than turnout's writes
    reopened = await JsonFileBackend.open(copy)
    assert {key: await reopened.get(key) for key in "ABDF"} == {
        "A": b'"turnout"', "B": b'"old app"', "D": None, "F": b'"old app"'}
    await reopened.close()


async def test_a_rewrite_never_writes_over_a_change_it_has_not_read(tmp_path: Path) -> None:
    """A change the old application makes just before a rewrite is read and kept by it."""
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path, flush_interval=NEVER)
    await backend.set("mine", b"1")
    path.write_text('{"theirs": 2}')  # in place, different size: the rewrite's own check sees it
    await backend.close()
    assert on_disk(path) == {"mine": 1, "theirs": 2}


async def test_a_torn_last_entry_is_ignored(tmp_path: Path) -> None:
    """A crash mid-append leaves a partial last record: it was never acknowledged and is dropped."""
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path, flush_interval=NEVER)
    await backend.set("a", b"1")
    await backend.set("b", b'"the last one"')
    copy = crash_copy(path, tmp_path / "crash")
    await backend.close()
    journal = journal_path(copy)
    for cut in (1, 5, 20):
        torn = tmp_path / f"torn{cut}"
        torn.mkdir()
        shutil.copy2(copy, torn / copy.name)
        raw = journal.read_bytes()
        (torn / journal.name).write_bytes(raw[:-cut])
        reopened = await JsonFileBackend.open(torn / copy.name)
        assert await reopened.get("a") == b"1"
        assert await reopened.get("b") is None
        await reopened.close()
    zeroed = tmp_path / "zeroed"
    zeroed.mkdir()
    shutil.copy2(copy, zeroed / copy.name)
    (zeroed / journal.name).write_bytes(journal.read_bytes() + bytes(64))  # size grew, data never landed
    reopened = await JsonFileBackend.open(zeroed / copy.name)
    assert await reopened.get("b") == b'"the last one"'
    await reopened.close()


async def test_a_damaged_middle_entry_refuses_to_open_and_changes_nothing(tmp_path: Path) -> None:
    """A bad record with good ones after it: opening fails with a clear error rather than drop them."""
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path, flush_interval=NEVER)
    for key in ("a", "b", "c"):
        await backend.set(key, b'"value"')
    copy = crash_copy(path, tmp_path / "crash")
    await backend.close()
    journal = journal_path(copy)
    raw = bytearray(journal.read_bytes())
    middle = raw.index(b'"value"')  # the first entry's value, with two entries after it
    raw[middle + 1] ^= 0xFF
    journal.write_bytes(bytes(raw))
    before = copy.read_bytes()
    with pytest.raises(JournalDamaged, match=r"damaged entry at byte \d+ with readable entries after it"):
        await JsonFileBackend.open(copy, flush_interval=NEVER)
    assert copy.read_bytes() == before
    assert journal.read_bytes() == bytes(raw)
    # The lock was released: once the damage is dealt with, the store opens.
    journal.unlink()
    await (await JsonFileBackend.open(copy)).close()


async def test_a_crash_between_rewrite_and_rotation_replays_nothing_twice_wrongly(tmp_path: Path) -> None:
    """The file already holds the journal's entries (the rewrite renamed, the journal not yet rotated).
    With the flush marker naming that file nothing is replayed; without it the replay is idempotent."""
    path = tmp_path / "legacy.json"
    path.write_text("{}")
    base = signature(path.stat())
    entries = [Entry(1, "k", b"1"), Entry(2, "k", b"2"), Entry(3, "gone", b"3"), Entry(4, "gone", None)]
    for marked in (False, True):
        journal = JournalWriter(journal_path(path))
        journal.start(base, 0, b"".join(encode_entry(e) for e in entries))
        stat = replace_file(path, b'{"k": 2}')  # the rewrite holding entries 1-4
        if marked:
            journal.append(encode_flushed(4, signature(stat)))
        journal.close()
        contents = read_journal(journal_path(path))
        assert contents is not None
        pending, merge = contents.unapplied(signature(path.stat()))
        assert (len(pending), merge) == ((0, False) if marked else (4, True))
        backend = await JsonFileBackend.open(path)
        assert await backend.get("k") == b"2"
        assert await backend.get("gone") is None
        await backend.close()
        assert on_disk(path) == {"k": 2}
        path.write_text("{}")
        base = signature(path.stat())


async def test_a_failed_rewrite_keeps_writes_acknowledged_and_catches_up_later(tmp_path: Path) -> None:
    """A rewrite that cannot write leaves the writes in the journal; Sets go on; the file catches up."""
    folder = tmp_path / "store"
    folder.mkdir()
    path = folder / "legacy.json"
    backend = await JsonFileBackend.open(path, flush_interval=0.05)
    blocker = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    blocker.mkdir()
    await backend.set("a", b"1")
    await asyncio.sleep(0.2)  # let a rewrite try and fail
    await backend.set("b", b"2")
    assert on_disk(path) == {}
    copy = crash_copy(path, tmp_path / "crash")
    replayed = await JsonFileBackend.open(copy)
    assert await replayed.get("a") == b"1"
    assert await replayed.get("b") == b"2"
    await replayed.close()
    blocker.rmdir()

    async def flushed() -> bool:
        return backend.unflushed == 0

    await eventually(flushed)
    assert on_disk(path) == {"a": 1, "b": 2}
    await backend.close()


async def test_the_registry_passes_flush_interval(tmp_path: Path) -> None:
    """A spec with flush_interval opens the store with its journal on."""
    path = tmp_path / "legacy.json"
    backend = await open_backend(BackendSpec(type="jsonfile", path=path, options={"flush_interval": NEVER}))
    await backend.set("a", b"1")
    assert journal_path(path).exists()
    assert on_disk(path) == {}
    await backend.close()
    assert on_disk(path) == {"a": 1}


async def test_validate_reads_the_journaled_writes_too(tmp_path: Path) -> None:
    """validate reads the file as written without opening the store: it replays the journal itself."""
    path = tmp_path / "legacy.json"
    path.write_text('{"old": 1, "replaced": NaN}')
    backend = await JsonFileBackend.open(path, flush_interval=NEVER)
    await backend.set("new", b'{"deep": 1}')
    await backend.set("replaced", b"2")
    await backend.delete("old")
    raw, pending = read_file_and_journal(path)
    assert raw == path.read_bytes()
    assert [entry.key for entry in pending] == ["new", "replaced", "old"]
    result = validate_jsonfile(path, 1 << 20)
    assert result.ok, result.samples
    assert result.checked == 2
    await backend.close()


@pytest.mark.parametrize("force", [(), ("--force",)])
def test_archive_refuses_to_write_over_the_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   force: tuple[str, ...]) -> None:
    """`turnout archive OUT` naming the legacy file's journal exits 2, --force or not, as for the
    store's own file and lock, and the journal keeps the acknowledged write the file lacks."""
    live = tmp_path / "live" / "legacy.json"
    live.parent.mkdir()
    live.write_text('{"old": 1}')
    folder = tmp_path / "proxy"

    async def leave_a_journal() -> Path:
        backend = await JsonFileBackend.open(live, flush_interval=NEVER)
        await backend.set("journaled", b"2")
        copy = crash_copy(live, folder)  # the files as a crash now leaves them
        await backend.close()
        return copy

    path = asyncio.run(leave_a_journal())
    journal = journal_path(path)
    before = journal.read_bytes()
    config = write_config(folder, old={"type": "jsonfile", "path": "legacy.json", "flush_interval": NEVER},
                          new={"type": "jsondir", "path": "docs"})
    assert turnout(["archive", str(journal), "--store", "old", "--config", str(config), *force]) == 2
    assert "refusing to write an archive over the old store's journal" in capsys.readouterr().err
    assert journal.read_bytes() == before
    assert not journal.with_name(journal.name + ".partial").exists()
    assert asyncio.run(_items_after_open(path)) == {"old": b"1", "journaled": b"2"}


def test_tools_reading_a_damaged_journal_refuse(tmp_path: Path) -> None:
    path = tmp_path / "legacy.json"
    path.write_text("{}")
    journal_path(path).write_bytes(b"not a journal")
    with pytest.raises(JournalDamaged, match="does not start with its header"):
        read_file_and_journal(path)
    with pytest.raises(BackendUnavailable):
        validate_jsonfile(path, 1 << 20)


@pytest.mark.slow
@pytest.mark.parametrize(("preload", "run"), [(0, 1), (20_000, 1), (0, 2), (20_000, 2)])
async def test_sigkill_with_the_journal_on_keeps_every_acknowledged_write_and_no_deleted_key(
        tmp_path: Path, preload: int, run: int) -> None:
    """A writer process killed at a random point (mid-append, mid-rewrite, mid-rotation: the interval is
    short so rewrites run all along, and on a preloaded file each takes a while) leaves a whole file and
    journal holding every acknowledged write, and no key whose delete was acknowledged."""
    path = tmp_path / "store.json"
    path.write_text(json.dumps({f"pre:{i:06}": {"i": i} for i in range(preload)}))
    stop_after = 300 + int.from_bytes(os.urandom(2)) % 3000  # a random point in the stream
    lines = acknowledged_before_kill(["jsonfile", str(path), "1000000", "0.02"], kill_after=stop_after,
                                     watchdog_s=60)
    deleted = {line[1:] for line in lines if line.startswith("-")}
    written = [line for line in lines if not line.startswith("-")]
    # The file is whole on its own, before any replay.
    read_store(path)
    backend = await JsonFileBackend.open(path)
    # A key whose delete was under way at the kill may be there or not; every other one must be.
    kept = [key for key in written if int(key.split(":")[1]) % 3 != 0]
    missing = [key for key in kept if await backend.get(key) is None]
    revived = [key for key in deleted if await backend.get(key) is not None]
    assert missing == []
    assert revived == []
    for key in written:
        value = await backend.get(key)
        if value is not None:
            assert json.loads(value)["i"] == int(key.split(":")[1])
    await backend.close()
    assert not journal_path(path).exists()


async def test_a_broken_external_file_is_never_overwritten_and_writes_stay_journaled(tmp_path: Path) -> None:
    """While the old application's file is not valid JSON, Sets are still acknowledged (the journal
    holds them) and the file is left as it is; once whole again, the next rewrite merges both."""
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path, flush_interval=0.05)
    await backend.set("mine", b"1")

    async def flushed() -> bool:
        return backend.unflushed == 0

    await eventually(flushed)
    path.write_text('{"mine": 1, "half')
    await backend.set("next", b"2")
    await asyncio.sleep(0.3)  # several rewrites due, each refused by the broken file
    assert path.read_text() == '{"mine": 1, "half'
    assert await backend.get("next") == b"2"
    replace_file(path, b'{"mine": 1, "whole": true}')
    await eventually(flushed)
    assert on_disk(path) == {"mine": 1, "whole": True, "next": 2}
    await backend.close()


def test_member_names_render_exactly_the_file_render_store_writes() -> None:
    """The cached renderer of the journal's rewrites gives the same bytes as the plain one."""
    names = MemberNames()
    for data in ({}, {"a": b"1"}, {"\udc00": b"2", 'q"uote': b'"y"', "é": b"[]"},
                 {f"k{i}": str(i).encode() for i in range(3000)}, {"a": b"1"}):
        assert b"".join(names.parts(data)) == render_store(data)


@pytest.mark.slow
def test_the_sequential_bench_runs_quick(tmp_path: Path) -> None:
    """bench/jsonfile_sequential.py --quick runs every case end to end and writes its figures."""
    out = tmp_path / "seq.json"
    finished = subprocess.run([sys.executable, str(ROOT / "bench" / "jsonfile_sequential.py"), "--quick", "--json",
                               str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert finished.returncode == 0, finished.stderr
    doc = json.loads(out.read_text())
    assert [figure["case"].split(",")[0] for figure in doc["figures"]] == [
        "backend set", "backend set", "turnout serve set", "turnout serve set"]
    assert all(figure["value"] > 0 for figure in doc["figures"])
    assert set(doc["targets"]) == {doc["figures"][1]["case"], doc["figures"][3]["case"]}


_FAILED_APPEND = """
import asyncio, os, resource, signal, sys
from pathlib import Path
from proxy.backends.jsonfile import JsonFileBackend
from proxy.backends.jsonjournal import journal_path
from proxy.errors import BackendUnavailable

async def main(path: Path) -> None:
    backend = await JsonFileBackend.open(path, flush_interval=3600)
    await backend.set("a", b"1")
    size = journal_path(path).stat().st_size
    # A file size limit makes the append fail half-way, as a full disk would: a real short write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
    try:
        await backend.set("big", b'"' + b"x" * 1000 + b'"')
    except BackendUnavailable as exc:
        print("refused:", exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    print("size kept:", journal_path(path).stat().st_size == size)
    print("served:", await backend.get("big"))
    await backend.set("after", b"2")
    os._exit(0)  # a crash: no close, no rewrite

asyncio.run(main(Path(sys.argv[1])))
"""


def test_a_failed_append_is_cut_back_so_later_writes_stay_readable(tmp_path: Path) -> None:
    """An append that fails half-way (file size limit: a real short write) is refused, cut back out of
    the journal, never served; the writes after it are journaled and replayed after a crash."""
    path = tmp_path / "legacy.json"
    done = subprocess.run([sys.executable, "-c", _FAILED_APPEND, str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "refused: " in done.stdout
    assert "journal append failed" in done.stdout
    assert "size kept: True" in done.stdout
    assert "served: None" in done.stdout
    items, _ = read_store(path)
    assert items == {}  # only the journal holds the writes
    replayed = asyncio.run(_items_after_open(path))
    assert replayed == {"a": b"1", "after": b"2"}


async def _items_after_open(path: Path) -> dict[str, bytes]:
    backend = await JsonFileBackend.open(path)
    items = {key: value async for page in backend.scan() for key, value in page}
    await backend.close()
    return items


async def test_a_file_gone_missing_is_rebuilt_from_the_journal(tmp_path: Path) -> None:
    """The file deleted while turnout was down after a crash: every journaled write comes back, as a
    serving store puts a deleted file back whole."""
    path = tmp_path / "legacy.json"
    path.write_text('{"old": 1}')
    backend = await JsonFileBackend.open(path, flush_interval=NEVER)
    await backend.set("old", b"2")
    await backend.set("new", b"3")
    copy = crash_copy(path, tmp_path / "crash")
    await backend.close()
    copy.unlink()
    assert await _items_after_open(copy) == {"old": b"2", "new": b"3"}
