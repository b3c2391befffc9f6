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


@pytest.mark.parametrize("name", ["%6b.json", "%4B.json", "%4.json", "% 4b.json", "%ff.json", "~x.json", "~.json"])
async def test_names_encode_name_never_gives_are_not_listed(tmp_path: Path, name: str) -> None:
    """A name that only looks encoded (another spelling of a key, a bad escape) never lists a key twice or wrongly."""
    (tmp_path / name).write_text("1")
    backend = await JsonDirBackend.open(tmp_path)
    await backend.set("k", b"2")
    assert [key async for page in backend.keys() for key in page] == ["k"]
    assert [item async for page in backend.scan() for item in page] == [("k", b"2")]
    await backend.close()


async def test_long_keys_are_named_by_hash_with_their_key_beside(tmp_path: Path) -> None:
    """A key too long for a readable name gets a hashed file plus a key file; a key file naming another key is ignored."""
    key = "long/" + "é" * 300
    backend = await JsonDirBackend.open(tmp_path)
    await backend.set(key, b"1")
    stem = encode_name(key)
    assert stem.startswith("~")
    assert (tmp_path / f"{stem}.key").read_text() == key
    assert [k async for page in backend.keys() for k in page] == [key]
    await backend.set(key, b"2")
    assert await backend.get(key) == b"2"
    # A key file that does not hash to its name (copied by hand, say) lists nothing.
    (tmp_path / f"{stem}.key").write_text("other")
    assert [k async for page in backend.keys() for k in page] == []
    await backend.close()


async def test_keys_stream_in_pages_each_key_once(tmp_path: Path) -> None:
    """Listing a folder in small pages yields every key once and no page above its size."""
    backend = await JsonDirBackend.open(tmp_path)
    keys = [f"user:{i}" for i in range(25)] + ["other"]
    await backend.set_many([(key, b"1") for key in keys])
    pages = [page async for page in backend.keys("user:", page_size=4)]
    assert all(0 < len(page) <= 4 for page in pages)
    assert sorted(key for page in pages for key in page) == sorted(keys[:-1])
    assert await backend.get_many(["user:3", "nope"]) == [b"1", None]
    await backend.close()


async def test_second_open_of_the_same_folder_is_refused(tmp_path: Path) -> None:
    """Two turnout backends never write one folder at once."""
    backend = await JsonDirBackend.open(tmp_path)
    with pytest.raises(StoreLocked):
        await JsonDirBackend.open(tmp_path)
    await backend.close()
