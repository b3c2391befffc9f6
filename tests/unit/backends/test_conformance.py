"""The backend conformance suite: what every backend type must do to count as working (feature parity)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from proxy.backends import open_backend
from proxy.backends.base import Backend
from proxy.errors import InvalidArgument, StoreLocked
from tests.support.crashes import acknowledged_before_kill
from tests.unit.backends.conftest import DURABLE_TYPES, Opener, spec_for

#: Stores that cannot hold U+0000 in a key or in a string of a document, and why. Such a store must
#: refuse a key or document holding it with InvalidArgument, writing nothing, and hold all the rest.
NUL_REFUSED = {"postgres": "PostgreSQL text and jsonb cannot hold U+0000"}


async def holds_nul(backend: Backend, key: str, value: bytes) -> bool:
    """True when backend must hold a key or document with NUL; otherwise checks the set is refused, writing nothing."""
    if backend.type_name not in NUL_REFUSED:
        return True
    with pytest.raises(InvalidArgument):
        await backend.set(key, value)
    assert await backend.get(key) is None
    return False


async def all_keys(backend: Backend, prefix: str = "", page_size: int = 1000) -> list[str]:
    return [key async for page in backend.keys(prefix, page_size) for key in page]


async def all_items(backend: Backend, prefix: str = "", page_size: int = 1000) -> dict[str, bytes]:
    items: dict[str, bytes] = {}
    async for page in backend.scan(prefix, page_size):
        for key, value in page:
            assert key not in items, f"scan yielded {key!r} twice"
            items[key] = value
    return items


async def test_crud(backend: Backend) -> None:
    """Set then get returns the document; has and delete report presence; a missing key is None."""
    assert await backend.get("k") is None
    assert not await backend.has("k")
    await backend.set("k", b'{"a": 1}')
    assert json.loads(await backend.get("k") or b"") == {"a": 1}
    assert await backend.has("k")
    await backend.set("k", b"[2]")
    assert json.loads(await backend.get("k") or b"") == [2]
    assert await backend.delete("k")
    assert not await backend.delete("k")
    assert await backend.get("k") is None
    assert not await backend.has("k")


async def test_null_is_a_value_not_an_absence(backend: Backend) -> None:
    """A stored JSON null is found; it is not the same as a missing key."""
    await backend.set("n", b"null")
    assert await backend.get("n") == b"null"
    assert await backend.has("n")
    assert await all_keys(backend) == ["n"]
    assert await backend.delete("n")


async def test_every_json_kind_round_trips(backend: Backend) -> None:
    """Objects, arrays, strings, numbers, booleans and null come back equal as JSON."""
    docs = ['{"b": [1, {"c": null}], "a": "é"}', "[]", '"text \\u0000 with nul"', "-1.5e-7", "12345678901234567890",
            "true", "false", "null", "{}"]
    docs = [doc for i, doc in enumerate(docs) if "\\u0000" not in doc or await holds_nul(backend, f"n{i}", doc.encode())]
    for i, doc in enumerate(docs):
        await backend.set(f"k{i}", doc.encode())
    for i, doc in enumerate(docs):
        assert json.loads(await backend.get(f"k{i}") or b"") == json.loads(doc)


PREFIX_KEYS = ["a", "ab", "abc", "b", "a%c", "a_c", "a%", "aé", "aéz", "a\U0001f600", "A", "nul", "nul\x00a", "nul\x00b",
               "nul\x01", "z\U0010ffff", "z\U0010ffffx", "\U0010ffff", "\U0010ffff\U0010ffff", "\ud7ffx", "\ue000"]


@pytest.mark.parametrize("prefix", ["", "a", "ab", "a%", "a_", "aé", "a\U0001f600", "nul", "nul\x00", "nul\x00b",
                                    "z\U0010ffff", "\U0010ffff", "\ud7ff", "zzz"])
async def test_prefix_listing(backend: Backend, prefix: str) -> None:
    """keys and scan return exactly the keys with the prefix: "" is all, % and _ are plain characters, NUL and top code points work."""
    keys = PREFIX_KEYS
    if backend.type_name in NUL_REFUSED:  # the whole batch is refused, then the keys without NUL are held
        with pytest.raises(InvalidArgument):
            await backend.set_many([(k, json.dumps(k).encode()) for k in PREFIX_KEYS])
        assert await all_keys(backend) == []
        keys = [k for k in PREFIX_KEYS if "\x00" not in k]
    await backend.set_many([(k, json.dumps(k).encode()) for k in keys])
    expected = sorted(k for k in keys if k.startswith(prefix))
    assert sorted(await all_keys(backend, prefix)) == expected
    items = await all_items(backend, prefix)
    assert sorted(items) == expected
    assert all(json.loads(value) == key for key, value in items.items())
    assert sorted(await all_keys(backend, prefix, page_size=1)) == expected


async def test_pages_hold_every_key_exactly_once(backend: Backend) -> None:
    """With a small page size, pages are bounded and together list every key once."""
    await backend.set_many([(f"p:{i:04}", str(i).encode()) for i in range(257)])
    pages = [page async for page in backend.keys("p:", 10)]
    assert all(0 < len(page) <= 10 for page in pages)
    flat = [key for page in pages for key in page]
    assert len(flat) == len(set(flat)) == 257
    items = await all_items(backend, "p:", 7)
    assert items == {f"p:{i:04}": str(i).encode() for i in range(257)}


async def test_unicode_and_hostile_keys(backend: Backend) -> None:
    """Keys with unicode, separators, dots, NUL and 1024 bytes are stored apart and listed exactly."""
    keys = ["日本語", "emoji \U0001f680", "../../etc/passwd", "a/b\\c", "..", ".", "nul\x00byte", "Case", "case",
            "k" * 1024, "é" * 512, " spaced ", "tab\tnew\nline"]
    keys = [key for key in keys if "\x00" not in key or await holds_nul(backend, key, b"0")]
    for i, key in enumerate(keys):
        await backend.set(key, str(i).encode())
    for i, key in enumerate(keys):
        assert await backend.get(key) == str(i).encode(), key
    assert sorted(await all_keys(backend)) == sorted(keys)


async def test_large_value(backend: Backend) -> None:
    """A 4 MiB document is stored and read back whole."""
    doc = json.dumps({"blob": "x" * (4 * 1024 * 1024 - 20)}).encode()
    await backend.set("big", doc)
    assert json.loads(await backend.get("big") or b"") == json.loads(doc)
    assert json.loads((await all_items(backend))["big"]) == json.loads(doc)


@pytest.mark.slow
async def test_many_keys(backend: Backend) -> None:
    """Five thousand keys written in bulk and five thousand by concurrent single sets are all there."""
    await backend.set_many([(f"bulk:{i}", str(i).encode()) for i in range(5000)])
    await asyncio.gather(*(backend.set(f"one:{i}", str(i).encode()) for i in range(5000)))
    items = await all_items(backend, page_size=333)
    assert len(items) == 10_000
    assert all(items[f"bulk:{i}"] == items[f"one:{i}"] == str(i).encode() for i in range(5000))
    assert len(await all_keys(backend, "one:")) == 5000


async def test_writes_issued_together_apply_in_order(backend: Backend) -> None:
    """Concurrent writes to one key take effect in the order they were issued, and each delete reports what it found."""
    answers = await asyncio.gather(
        backend.delete("k"), backend.set("k", b"1"), backend.delete("k"), backend.delete("k"),
        backend.set("k", b"2"), backend.set_many([("k", b"3"), ("other", b"4")]), backend.delete("k"),
        backend.set("k", b"5"),
    )
    assert answers == [False, None, True, False, None, None, True, None]
    assert await backend.get("k") == b"5"
    assert await backend.get("other") == b"4"


async def test_concurrent_writers(backend: Backend) -> None:
    """Many concurrent writers lose nothing on distinct keys and leave one written value on a shared key."""

    async def writer(n: int) -> None:
        for i in range(20):
            await backend.set(f"w{n}:{i}", str(i).encode())
            await backend.set("shared", json.dumps([n, i]).encode())
            if i % 5 == 0:
                await backend.delete(f"w{n}:{i}")

    await asyncio.gather(*(writer(n) for n in range(16)))
    items = await all_items(backend)
    for n in range(16):
        for i in range(20):
            assert items.get(f"w{n}:{i}") == (None if i % 5 == 0 else str(i).encode())
    n, i = json.loads(items["shared"])
    assert 0 <= n < 16
    assert i == 19


async def test_close_is_idempotent(backend: Backend) -> None:
    """Closing twice is harmless."""
    await backend.set("k", b"1")
    await backend.close()
    await backend.close()


@pytest.mark.parametrize("kind", DURABLE_TYPES)
async def test_opening_a_missing_path_creates_the_store(kind: str, tmp_path: Path) -> None:
    """A store whose path and parent folders do not exist yet is created empty, and holds what is written to it."""
    spec = spec_for(kind, tmp_path / "not" / "yet")
    backend = await open_backend(spec)
    try:
        assert await all_keys(backend) == []
        await backend.set("k", b"1")
    finally:
        await backend.close()
    assert spec.path is not None
    assert spec.path.exists()
    again = await open_backend(spec)
    try:
        assert await again.get("k") == b"1"
    finally:
        await again.close()


@pytest.mark.parametrize("kind", DURABLE_TYPES)
async def test_a_store_open_elsewhere_is_refused_until_closed(opener: Opener) -> None:
    """A second open of a store in use fails with StoreLocked, and succeeds once the first is closed."""
    first = await opener()
    with pytest.raises(StoreLocked):
        await opener()
    await first.set("k", b"1")
    await first.close()
    second = await opener()
    assert await second.get("k") == b"1"


@pytest.mark.parametrize("kind", DURABLE_TYPES)
async def test_durable_across_close_and_reopen(opener: Opener) -> None:
    """What was written before close is there after reopening; what was deleted stays deleted."""
    first = await opener()
    await first.set_many([(f"k{i}", str(i).encode()) for i in range(100)])
    await first.set("null", b"null")
    await first.delete("k7")
    await first.close()
    second = await opener()
    items = await all_items(second)
    assert len(items) == 100
    assert "k7" not in items
    assert items["k99"] == b"99"
    assert items["null"] == b"null"


@pytest.mark.parametrize("kind", DURABLE_TYPES)
async def test_close_flushes_writes_under_way(opener: Opener) -> None:
    """Writes already started when close is called are completed, acknowledged and kept."""
    first = await opener()
    writes = [asyncio.create_task(first.set(f"k{i}", str(i).encode())) for i in range(50)]
    await asyncio.sleep(0)  # let every write start and queue before close
    await first.close()
    assert await asyncio.wait_for(asyncio.gather(*writes), 10) == [None] * 50
    second = await opener()
    assert await all_items(second) == {f"k{i}": str(i).encode() for i in range(50)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", DURABLE_TYPES)
async def test_sigkill_keeps_every_acknowledged_write(kind: str, opener: Opener, tmp_path: Path) -> None:
    """A writer process killed mid-stream leaves a readable store holding every write it had acknowledged."""
    path = spec_for(kind, tmp_path).path
    acknowledged = acknowledged_before_kill([kind, str(path), "100000"], kill_after=200, watchdog_s=30)
    assert len(acknowledged) >= 200
    backend = await opener()
    items = await all_items(backend)
    missing = [key for key in acknowledged if key not in items]
    assert missing == []
    for key in acknowledged:
        assert json.loads(items[key])["i"] == int(key.split(":")[1])


async def test_get_many_matches_single_gets(backend: Backend) -> None:
    """The bulk read used by migration gives what one get per key gives, absent keys included."""
    from proxy.backends.base import get_many

    await backend.set_many([(f"g{i}", str(i).encode()) for i in range(1200)])
    keys = [f"g{i}" for i in range(0, 1300, 7)]
    assert await get_many(backend, keys) == [await backend.get(key) for key in keys]
