"""The one-file-per-key legacy folder: no key escapes the folder and no two keys share a file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.backends.jsondir import MAX_NAME, JsonDirBackend, decode_name, encode_name
from proxy.errors import StoreLocked

HOSTILE = ["..", ".", "../x", "/etc/passwd", "a\\b", "nul\x00", "k" * 1000, "A", "a", "Ä", "ä", "%41", "~x", ".hidden",
           "x.json", "CON", "日本"]


@given(st.text(min_size=1, max_size=300))
def test_encoding_is_reversible_and_safe(key: str) -> None:
    """Every key encodes to a plain, lower-case file name that decodes back to the key (or a hashed name)."""
    stem = encode_name(key)
    assert "/" not in stem
    assert "\\" not in stem
    assert "\x00" not in stem
    assert not stem.startswith(".")
    assert stem == stem.lower()
    if stem.startswith("~"):
        assert len(stem) == 65
    else:
        assert len(stem) <= MAX_NAME
        assert decode_name(stem) == key


@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_different_keys_never_share_a_name_even_ignoring_case(a: str, b: str) -> None:
    """Two different keys get names that differ even on a case-insensitive file system."""
    if a != b:
        assert encode_name(a).lower() != encode_name(b).lower()


async def test_hostile_keys_stay_inside_the_folder(tmp_path: Path) -> None:
    """Keys with separators, dots, NUL and 1000 characters round-trip, and every file stays in the folder."""
    folder = tmp_path / "store"
    backend = await JsonDirBackend.open(folder)
    for i, key in enumerate(HOSTILE):
        await backend.set(key, str(i).encode())
    for i, key in enumerate(HOSTILE):
        assert await backend.get(key) == str(i).encode()
    listed = sorted([key async for page in backend.keys() for key in page])
    assert listed == sorted(HOSTILE)
    assert list(tmp_path.iterdir()) == [folder]
    assert all(path.parent == folder and path.is_file() for path in folder.rglob("*"))
    names = [path.name for path in folder.iterdir()]
    assert len({name.lower() for name in names}) == len(names)
    for key in HOSTILE:
        assert await backend.delete(key)
    assert sorted(path.name for path in folder.iterdir()) == [".turnout.lock"]
    await backend.close()


async def test_value_file_holds_the_document(tmp_path: Path) -> None:
    """A key's file holds its document as it is, for the old application to read."""
    backend = await JsonDirBackend.open(tmp_path)
    await backend.set("user:1", b'{"name": "Ada"}')
    assert (tmp_path / "user%3a1.json").read_bytes() == b'{"name": "Ada"}'
    await backend.close()


async def test_foreign_files_are_not_listed(tmp_path: Path) -> None:
    """Temp files, the lock and files turnout did not name are not keys."""
    (tmp_path / ".x.json.123.tmp").write_text("1")
    (tmp_path / "README.TXT").write_text("x")
    (tmp_path / "Upper.json").write_text("1")
    backend = await JsonDirBackend.open(tmp_path)
    await backend.set("k", b"1")
    assert [key async for page in backend.keys() for key in page] == ["k"]
    await backend.close()


async def test_second_open_of_the_same_folder_is_refused(tmp_path: Path) -> None:
    """Two turnout backends never write one folder at once."""
    backend = await JsonDirBackend.open(tmp_path)
    with pytest.raises(StoreLocked):
        await JsonDirBackend.open(tmp_path)
    await backend.close()
