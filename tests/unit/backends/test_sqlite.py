"""What the SQLite backend does beyond the conformance suite: group commit, and failures that stay contained."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.backends.sqlite import SqliteBackend
from proxy.errors import BackendUnavailable


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteBackend]:
    backend = await SqliteBackend.open(tmp_path / "store.sqlite")
    yield backend
    await backend.close()


def external(store: SqliteBackend) -> sqlite3.Connection:
    """A second connection to the store's file, as an operator or another program would open it."""
    return sqlite3.connect(store.path, isolation_level=None)


async def test_concurrent_writers_share_commits(store: SqliteBackend) -> None:
    """Sixteen concurrent writers are group-committed: far fewer transactions than writes, none lost."""

    async def writer(n: int) -> None:
        for i in range(40):
            await store.set(f"w{n}:{i}", b"1")

    before = store.commits
    await asyncio.gather(*(writer(n) for n in range(16)))
    commits = store.commits - before
    assert 0 < commits * 2 <= 16 * 40
    assert len([key async for page in store.keys("w") for key in page]) == 16 * 40


async def test_the_store_is_in_wal_mode_with_the_documented_table(store: SqliteBackend) -> None:
    """The file is a WAL database with the kv table, so other SQLite tools can read it while the proxy writes."""
    await store.set("k", b'{"a": 1}')
    connection = external(store)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT key, value FROM kv").fetchall() == [("k", b'{"a": 1}')]
    finally:
        connection.close()


async def test_a_key_sqlite_cannot_hold_fails_alone(store: SqliteBackend) -> None:
    """A key with a lone surrogate is refused as BackendUnavailable; the writes beside it and after it succeed."""
    # wait_for: a writer thread killed by the bad key would leave these waiting forever.
    outcomes = await asyncio.wait_for(asyncio.gather(
        store.set("before", b"1"), store.set("bad\ud800", b"2"), store.set_many([("ok", b"3"), ("bad\udfff", b"4")]),
        store.delete("before"), store.set("after", b"5"), return_exceptions=True,
    ), 10)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], BackendUnavailable)
    assert isinstance(outcomes[2], BackendUnavailable)
    assert list(outcomes[3:]) == [True, None]
    assert await store.get("ok") is None  # set_many is all or nothing
    with pytest.raises(BackendUnavailable, match="UTF-8"):
        await store.get("bad\ud800")
    await store.set("later", b"6")
    assert [key async for page in store.keys() for key in page] == ["after", "later"]


async def test_a_failing_batch_acknowledges_nothing_it_did_not_commit(store: SqliteBackend) -> None:
    """When SQLite refuses a write, its callers get BackendUnavailable, only acknowledged writes are stored, and writing goes on."""
    connection = external(store)
    try:
        connection.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON kv WHEN NEW.key = 'boom' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    finally:
        connection.close()
    keys = [f"k{i}" for i in range(20)]
    outcomes = await asyncio.gather(
        *(store.set(key, b"1") for key in keys[:10]), store.set("boom", b"1"),
        *(store.set(key, b"1") for key in keys[10:]), return_exceptions=True,
    )
    assert isinstance(outcomes[10], BackendUnavailable)
    assert "refused" in str(outcomes[10])
    acknowledged = {key for key, o in zip(keys, outcomes[:10] + outcomes[11:], strict=True) if o is None}
    refused = {key for key, o in zip(keys, outcomes[:10] + outcomes[11:], strict=True) if isinstance(o, BackendUnavailable)}
    assert acknowledged | refused == set(keys)
    assert set(await asyncio.gather(*(store.get(key) for key in keys))) <= {b"1", None}
    assert {key for key in keys if await store.get(key) is not None} == acknowledged
    await store.set("after", b"2")
    assert await store.get("after") == b"2"


async def test_values_written_as_text_by_another_program_read_as_bytes(store: SqliteBackend) -> None:
    """A value some other tool stored as TEXT comes back as the same UTF-8 bytes, in get, scan and get_many."""
    connection = external(store)
    try:
        connection.execute("INSERT INTO kv (key, value) VALUES ('t', '{\"é\": 1}')")
    finally:
        connection.close()
    expected = '{"é": 1}'.encode()
    assert await store.get("t") == expected
    assert [item async for page in store.scan() for item in page] == [("t", expected)]
    assert await store.get_many(["t", "absent"]) == [expected, None]


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    """Opening a file that is not SQLite fails with BackendUnavailable and leaves the store unlocked."""
    path = tmp_path / "store.sqlite"
    path.write_bytes(b"this is not a database, just some text that is long enough" * 100)
    with pytest.raises(BackendUnavailable, match=r"store\.sqlite"):
        await SqliteBackend.open(path)
    path.unlink()
    backend = await SqliteBackend.open(path)
    await backend.close()


async def test_concurrent_point_reads_each_get_their_own_answer(store: SqliteBackend) -> None:
    """Gets and has calls batched together are each answered for their own key, absent keys included."""
    await store.set_many([(f"k{i}", str(i).encode()) for i in range(0, 600, 2)])
    values = await asyncio.gather(*(store.get(f"k{i}") for i in range(600)))
    found = await asyncio.gather(*(store.has(f"k{i}") for i in range(600)))
    assert values == [str(i).encode() if i % 2 == 0 else None for i in range(600)]
    assert found == [i % 2 == 0 for i in range(600)]


async def test_a_reader_that_gives_up_does_not_disturb_the_others(store: SqliteBackend) -> None:
    """Cancelled gets leave the gets batched with them answered, and later gets still work."""
    await store.set_many([(f"k{i}", str(i).encode()) for i in range(200)])
    reads = [asyncio.create_task(store.get(f"k{i}")) for i in range(200)]
    await asyncio.sleep(0)  # every get is queued
    for task in reads[::3]:
        task.cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(*reads, return_exceptions=True), 10)
    for i, outcome in enumerate(outcomes):
        if i % 3 == 0:
            assert isinstance(outcome, asyncio.CancelledError) or outcome == str(i).encode()
        else:
            assert outcome == str(i).encode()
    assert await store.get("k199") == b"199"


async def test_close_answers_reads_already_queued(tmp_path: Path) -> None:
    """Gets under way when close is called are answered, and gets after close are refused."""
    backend = await SqliteBackend.open(tmp_path / "store.sqlite")
    await backend.set("k", b"1")
    reads = [asyncio.create_task(backend.get("k")) for _ in range(100)]
    await asyncio.sleep(0)  # every get is queued
    await asyncio.wait_for(backend.close(), 10)
    assert await asyncio.wait_for(asyncio.gather(*reads), 10) == [b"1"] * 100
    with pytest.raises(BackendUnavailable, match="closed"):
        await backend.get("k")
