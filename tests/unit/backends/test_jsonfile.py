"""The legacy JSON file backend: the old application's file stays whole, shared and locked."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from proxy.backends.jsonfile import JsonFileBackend
from proxy.durable import replace_file
from proxy.errors import BackendUnavailable, StoreLocked


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_file_is_one_json_object_in_the_legacy_format(tmp_path: Path) -> None:
    """After writes the file is a single JSON object whose members are the keys and documents."""
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path)
    await backend.set("a", b'{"x": [1, 2]}')
    await backend.set("b", b"null")
    await backend.set("c", b'"gone"')
    await backend.delete("c")
    assert json.loads(path.read_text()) == {"a": {"x": [1, 2]}, "b": None}
    await backend.close()


async def test_existing_legacy_file_is_served(tmp_path: Path) -> None:
    """A file written by the old application, with any formatting, is read as it is."""
    path = tmp_path / "legacy.json"
    path.write_text('{\n  "user:1": {"name": "Ada", "age": 36},\n  "n": null, "dup": 1, "dup": 2\n}\n')
    backend = await JsonFileBackend.open(path)
    assert json.loads(await backend.get("user:1") or b"") == {"name": "Ada", "age": 36}
    assert await backend.get("n") == b"null"
    assert await backend.get("dup") == b"2"
    await backend.close()


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", '"text"'])
async def test_a_file_that_is_not_a_json_object_is_refused(tmp_path: Path, content: str) -> None:
    """A legacy file that is not one JSON object fails to open with a message naming it, and is left as it is."""
    path = tmp_path / "legacy.json"
    path.write_text(content)
    with pytest.raises(BackendUnavailable, match=r"legacy\.json"):
        await JsonFileBackend.open(path)
    assert path.read_text() == content
    # the lock was released: a corrected file opens
    path.write_text("{}")
    await (await JsonFileBackend.open(path)).close()


async def test_change_by_the_old_application_is_noticed_and_served(tmp_path: Path) -> None:
    """When the old application replaces the file, turnout serves the new contents."""
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path)
    await backend.set("mine", b"1")
    replace_file(path, b'{"mine": 1, "theirs": {"from": "old app"}}')

    async def served() -> bool:
        return await backend.get("theirs") is not None

    await eventually(served)
    assert json.loads(await backend.get("theirs") or b"") == {"from": "old app"}
    await backend.close()


async def test_turnout_write_never_clobbers_an_unseen_external_change(tmp_path: Path) -> None:
    """A write right after the old application changed the file keeps that change."""
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path)
    await backend.set("mine", b"1")
    # In-place rewrite with a different size, so the change is visible to the flush's own check.
    path.write_text('{"mine": 1, "theirs": 2}')
    await backend.set("next", b"3")
    assert json.loads(path.read_text()) == {"mine": 1, "theirs": 2, "next": 3}
    await backend.close()


async def test_second_open_of_the_same_file_is_refused(tmp_path: Path) -> None:
    """Two turnout backends, in one process or two, never write one file at once."""
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path)
    with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
        await JsonFileBackend.open(path)
    code = (
        "import asyncio, sys; from pathlib import Path; from proxy.backends.jsonfile import JsonFileBackend\n"
        "from proxy.errors import StoreLocked\n"
        "try:\n    asyncio.run(JsonFileBackend.open(Path(sys.argv[1])))\n"
        "except StoreLocked as e:\n    print(e); sys.exit(3)\n"
    )
    other = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30)
    assert other.returncode == 3
    assert "locked by another turnout process" in other.stdout
    await backend.close()
    await (await JsonFileBackend.open(path)).close()


async def test_concurrent_writers_share_rewrites(tmp_path: Path) -> None:
    """Fifty concurrent sets cost far fewer than fifty rewrites of the file, and all land."""
    backend = await JsonFileBackend.open(tmp_path / "legacy.json")
    before = backend.rewrites
    await asyncio.gather(*(backend.set(f"k{i}", str(i).encode()) for i in range(50)))
    assert backend.rewrites - before <= 5
    assert json.loads((tmp_path / "legacy.json").read_text()) == {f"k{i}": i for i in range(50)}
    await backend.close()


async def test_without_group_commit_every_set_rewrites(tmp_path: Path) -> None:
    """The benchmark baseline really rewrites the file once per set."""
    backend = await JsonFileBackend.open(tmp_path / "legacy.json", group_commit=False)
    await asyncio.gather(*(backend.set(f"k{i}", b"1") for i in range(10)))
    assert backend.rewrites == 10
    await backend.close()


async def test_a_failed_rewrite_changes_nothing_and_says_so(tmp_path: Path) -> None:
    """When the rewrite cannot be written, the callers get BackendUnavailable and reads still match the disk."""
    folder = tmp_path / "store"
    folder.mkdir()
    path = folder / "legacy.json"
    backend = await JsonFileBackend.open(path)
    await backend.set("kept", b"1")
    # A folder where the temp file must go makes the temp file's creation fail, as a full disk would.
    blocker = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    blocker.mkdir()
    with pytest.raises(BackendUnavailable, match="write failed"):
        await backend.set("lost", b"2")
    assert await backend.get("lost") is None
    assert json.loads(path.read_text()) == {"kept": 1}
    blocker.rmdir()
    await backend.set("later", b"3")
    assert json.loads(path.read_text()) == {"kept": 1, "later": 3}
    await backend.close()


async def test_a_failed_rewrite_keeps_the_external_change_it_had_caught_up_with(tmp_path: Path) -> None:
    """An external change seen just before a failed rewrite is served and kept by the next write."""
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path)
    await backend.set("mine", b"1")
    path.write_text('{"mine": 1, "theirs": 22}')
    blocker = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    blocker.mkdir()
    with pytest.raises(BackendUnavailable, match="write failed"):
        await backend.set("lost", b"2")
    blocker.rmdir()
    assert await backend.get("theirs") == b"22"
    assert await backend.get("lost") is None
    await backend.set("later", b"3")
    assert json.loads(path.read_text()) == {"mine": 1, "theirs": 22, "later": 3}
    await backend.close()


async def test_a_broken_external_file_is_never_overwritten(tmp_path: Path) -> None:
    """While the old application's file is not valid JSON, writes fail and reads keep the last good contents."""
    path = tmp_path / "legacy.json"
    backend = await JsonFileBackend.open(path)
    await backend.set("mine", b"1")
    path.write_text('{"mine": 1, "half')
    with pytest.raises(BackendUnavailable, match="not valid JSON"):
        await backend.set("next", b"2")
    assert path.read_text() == '{"mine": 1, "half'
    assert await backend.get("mine") == b"1"
    replace_file(path, b'{"mine": 1, "whole": true}')
    await backend.set("next", b"2")
    assert json.loads(path.read_text()) == {"mine": 1, "whole": True, "next": 2}
    await backend.close()


def _no_constants(name: str) -> object:
    raise AssertionError(f"{name} is not JSON")


async def test_values_python_cannot_carry_unchanged_are_kept_as_written(tmp_path: Path) -> None:
    """Numbers a float or int conversion would change (1e400, 5000 digits) and lone surrogates survive a rewrite."""
    path = tmp_path / "legacy.json"
    huge = "9" * 5000
    path.write_text(f'{{"big": [1e400, 2.50], "huge": {huge}, "s": "\\ud800", "k": 1}}')
    backend = await JsonFileBackend.open(path)
    assert await backend.get("big") == b"[1e400, 2.50]"
    assert await backend.get("huge") == huge.encode()
    assert await backend.get("s") == b'"\\ud800"'
    await backend.set("k", b"2")
    text = path.read_text()
    assert "1e400" in text
    assert huge in text
    # Still valid JSON: no Infinity written (numbers read as text, so 5000 digits parse).
    json.loads(text, parse_constant=_no_constants, parse_int=str, parse_float=str)
    await backend.close()


async def test_lone_surrogates_survive_a_rewrite_of_a_compacted_file(tmp_path: Path) -> None:
    """A string the old application wrote as an escaped lone surrogate stays escaped, in a value and in a key."""
    path = tmp_path / "legacy.json"
    path.write_text('{"s": ["\\ud800"], "\\udc00": 1}')
    backend = await JsonFileBackend.open(path)
    assert await backend.get("s") == b'["\\ud800"]'
    await backend.set("k", b"2")
    assert json.loads(path.read_text()) == {"s": ["\ud800"], "\udc00": 1, "k": 2}
    await backend.close()
