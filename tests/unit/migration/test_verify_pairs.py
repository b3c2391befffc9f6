"""Verify's comparison of a key both stores hold, in both of its walks (merged ordered scans, and an
unordered store read into memory): the same bytes, a store's own spelling of the same document,
and real differences, each with checksums that are the stores' own content checksums."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.backends.base import Backend
from proxy.backends.jsondir import JsonDirBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.migration.checksum import summarize
from proxy.migration.stores import Stores
from proxy.migration.verify import verify
from proxy.routing.flags import Flags
from proxy.routing.router import Router

OLD = {
    "same": b'{"a":1,"b":[true,null]}',
    "spaced": b'{"b": [true, null], "a": 1}',  # the same document as jsonb would write it back
    "one": b'{"n":1}',  # 1.0 in new: equal as JSON numbers, written out differently
    "bool": b'{"n":true}',  # 1 in new: a different document
    "float": b"[1e16, 0.5]",
    "text": b'"caf\\u00e9"',
    "differs": b'{"a":1}',
    "only-old": b"[]",
}
NEW = {
    "same": b'{"a":1,"b":[true,null]}',
    "spaced": b'{"a":1,"b":[true,null]}',
    "one": b'{"n":1.0}',
    "bool": b'{"n":1}',
    "float": b"[10000000000000000.0,0.5]",
    "text": '"café"'.encode(),
    "differs": b'{"a":2}',
    "only-new": b"{}",
}


@pytest.fixture(params=["ordered", "unordered"])
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    backend: Backend
    if request.param == "ordered":
        backend = await SqliteBackend.open(tmp_path / "new.sqlite")
    else:
        backend = await JsonDirBackend.open(tmp_path / "new")
    await backend.set_many(list(NEW.items()))
    yield backend
    await backend.close()


async def test_each_kind_of_pair_is_compared_and_counted_in_both_checksums(new_store: Backend,
                                                                           tmp_path: Path) -> None:
    old = await SqliteBackend.open(tmp_path / "old.sqlite")
    try:
        await old.set_many(list(OLD.items()))
        assert old.ordered_scan is True
        result = await verify(Stores(old, new_store, Router(Flags())))
        assert (result.missing, result.different, result.extra) == (1, 2, 1)
        assert sorted(result.samples["different"]) == ["bool", "differs"]
        assert result.samples["missing"] == ["only-old"]
        assert result.samples["extra"] == ["only-new"]
        assert (result.old_records, result.new_records) == (len(OLD), len(NEW))
        # Each side's checksum is that store's own, computed key by key on its own.
        old_summary, new_summary = await summarize(old), await summarize(new_store)
        assert (result.old_checksum, result.new_checksum) == (old_summary.checksum, new_summary.checksum)
    finally:
        await old.close()


async def test_stores_holding_the_same_documents_differently_written_verify_clean(new_store: Backend,
                                                                                   tmp_path: Path) -> None:
    old = await SqliteBackend.open(tmp_path / "old.sqlite")
    try:
        await old.set_many([(key, NEW[key]) for key in ("same", "float", "text")]
                           + [("spaced", OLD["spaced"]), ("only-new", b"{ }"), ("one", b'{"n":1.0}'),
                              ("bool", b'{"n": 1}'), ("differs", b'{"a": 2}')])
        result = await verify(Stores(old, new_store, Router(Flags())))
        assert result.clean, result.to_document()
        # Equal documents, equal canonical forms (bar 1 against 1.0): the checksums agree.
        assert result.old_checksum == result.new_checksum
    finally:
        await old.close()
