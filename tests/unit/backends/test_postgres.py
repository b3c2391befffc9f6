"""The postgres store on a real PostgreSQL server: what only this store does (what every store does is
in test_conformance.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from proxy.backends import open_backend
from proxy.backends.postgres import PostgresBackend
from proxy.backends.postgresdocs import (
    NUL_KEY,
    NUL_STRING,
    NUMBER_RANGE,
    SURROGATE_KEY,
    batch_refusal,
    number_fits,
    refusal,
)
from proxy.backends.registry import STORE_TYPES
from proxy.config import BackendSpec
from proxy.errors import BackendUnavailable, InvalidArgument
from proxy.migration.validate import validate_jsonfile
from tests.support.servers.postgres import PostgresServer, _free_port

#: Short bounds for the outage tests, so a refused or silent server shows within a second or two.
FAST = {"call_timeout": 1.0, "connect_timeout": 1.0}
#: How long a test waits for a condition (the server back, say) before it fails.
PATIENCE_S = 30.0


@pytest.fixture
async def store(postgres_spec: BackendSpec) -> AsyncIterator[PostgresBackend]:
    backend = await PostgresBackend.open(postgres_spec)
    yield backend
    await backend.close()


@pytest.fixture
async def fast_store(postgres_server: PostgresServer, postgres_table: str) -> AsyncIterator[PostgresBackend]:
    """A store on this test's server and table with FAST timeouts, so an outage shows within a second."""
    backend = await open_on(postgres_server, postgres_table, **FAST)
    yield backend
    await backend.close()


async def open_on(server: PostgresServer, table: str, **options: object) -> PostgresBackend:
    backend = await open_backend(server.spec(table, **options))
    assert isinstance(backend, PostgresBackend)
    return backend


async def eventually(attempt: Callable[[], Awaitable[object]]) -> None:
    """Retry attempt until it stops raising BackendUnavailable; fail after PATIENCE_S."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + PATIENCE_S
    while True:
        try:
            await attempt()
            return
        except BackendUnavailable:
            if loop.time() > give_up:
                raise
            await asyncio.sleep(0.1)


async def all_keys(backend: PostgresBackend, prefix: str = "", page_size: int = 1000) -> list[str]:
    return [key async for page in backend.keys(prefix, page_size) for key in page]


# -- what PostgreSQL cannot hold ------------------------------------------------------------------


REFUSAL_CASES = [
    ("k", b'{"a": "x\\u0000y"}', NUL_STRING),
    ("k", b'["\\\\\\u0000"]', NUL_STRING),
    ("k", b"1e-16384", NUMBER_RANGE),
    ("k", b"[0.5e-16383]", NUMBER_RANGE),
    ("k", b"0." + b"0" * 16383 + b"1", NUMBER_RANGE),
    ("nul\x00key", b"1", NUL_KEY),
    ("k", b'{"a": "x\\\\u0000y", "n": 1e-16383, "big": 1.5e300}', None),
    ("k", b'"\\u0001 and \\\\\\\\u0000"', None),
    ("k\udc80", b"1", SURROGATE_KEY),
]


@pytest.mark.parametrize(("key", "value", "why"), REFUSAL_CASES)
def test_refusal_names_what_postgres_cannot_hold(key: str, value: bytes, why: str | None) -> None:
    """A \\u0000 escape (not an escaped backslash before u0000), a NUL key and a number beyond numeric are refused; the rest is not."""
    assert refusal(key, value) == why


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize(("key", "value", "why"), REFUSAL_CASES)
def test_a_bulk_write_is_refused_as_its_items_would_be(key: str, value: bytes, why: str | None, position: int) -> None:
    """batch_refusal (the whole batch checked at once) names the first item refusal() refuses, wherever it
    stands among clean ones, and nothing for a batch refusal() refuses nothing of."""
    clean = [("a", b'{"e": "x-y", "n": 1.5}'), ("b", b"[1, 2]")]
    items = [*clean[:position], (key, value), *clean[position:]]
    keys, values = [k for k, _ in items], [v for _, v in items]
    assert batch_refusal(keys, values) == (None if why is None else (key, why))
    assert batch_refusal([k for k, _ in clean], [v for _, v in clean]) is None


def test_number_fits_numeric_limits() -> None:
    """numeric holds 16383 digits after the point and 131072 before it, however the literal spells them."""
    assert number_fits("1e-16383")
    assert not number_fits("1e-16384")
    assert number_fits("1" + "0" * 131071)
    assert not number_fits("1" + "0" * 131072)
    assert number_fits("1.5e131071")
    assert not number_fits("1.5e131072")


@pytest.mark.parametrize("value", [b'{"a": "x\\u0000y"}', b"1e-16384"])
async def test_a_document_jsonb_cannot_hold_is_refused_and_nothing_written(
        store: PostgresBackend, value: bytes) -> None:
    """Set and set_many refuse the document with InvalidArgument before writing anything, even the batch's good items."""
    with pytest.raises(InvalidArgument, match="jsonb"):
        await store.set("k", value)
    with pytest.raises(InvalidArgument, match="jsonb"):
        await store.set_many([("good", b"1"), ("k", value), ("also", b"2")])
    assert await store.get("k") is None
    assert await all_keys(store) == []


async def test_values_close_to_the_limits_are_stored_as_written(store: PostgresBackend) -> None:
    """An escaped backslash before u0000 and a number at numeric's edge are held and read back equal as JSON."""
    docs = {"slash": b'"\\\\u0000"', "tiny": b"1e-16383", "unicode": b'"\\ud83d\\ude00 \\u00e9"'}
    await store.set_many(list(docs.items()))
    for key, doc in docs.items():
        assert json.loads(await store.get(key) or b"") == json.loads(doc)


async def test_a_key_holding_nul_is_refused_and_never_found(store: PostgresBackend) -> None:
    """Set refuses a NUL key with InvalidArgument; get, has, delete and listing treat it as absent."""
    with pytest.raises(InvalidArgument, match="U\\+0000"):
        await store.set("a\x00b", b"1")
    with pytest.raises(InvalidArgument, match="U\\+0000"):
        await store.set_many([("ok", b"1"), ("a\x00b", b"1")])
    assert await store.get("a\x00b") is None
    assert not await store.has("a\x00b")
    assert not await store.delete("a\x00b")
    assert await all_keys(store, "a\x00") == []
    assert await all_keys(store) == []


# -- the table, as other tools see it -------------------------------------------------------------


async def test_the_table_is_created_and_other_tools_query_it_as_jsonb(
        store: PostgresBackend, postgres_server: PostgresServer, postgres_table: str) -> None:
    """A missing table is created on first use with key text COLLATE "C" and value jsonb, which SQL can query."""
    await store.set("user:1", b'{"name": "Ada", "tags": ["x"]}')
    assert postgres_server.sql(f"SELECT value->>'name' FROM {postgres_table} WHERE key = 'user:1'") == "Ada"
    assert postgres_server.sql(f"SELECT jsonb_array_length(value->'tags') FROM {postgres_table}") == "1"
    columns = postgres_server.sql(
        "SELECT string_agg(column_name || ':' || data_type || ':' || coalesce(collation_name, ''), ',' ORDER BY column_name)"
        f" FROM information_schema.columns WHERE table_name = '{postgres_table}'")
    assert columns == "key:text:C,value:jsonb:"


async def test_rows_written_by_another_tool_are_read(
        store: PostgresBackend, postgres_server: PostgresServer, postgres_table: str) -> None:
    """A row another tool inserted is found, listed and read back as its JSON document."""
    await store.set("mine", b"1")
    postgres_server.sql(f"""INSERT INTO {postgres_table} VALUES ('theirs', '{{"b": 2, "a": [1]}}')""")
    assert json.loads(await store.get("theirs") or b"") == {"a": [1], "b": 2}
    assert await all_keys(store) == ["mine", "theirs"]


async def test_keys_are_listed_in_code_point_order(store: PostgresBackend) -> None:
    """keys and scan yield keys in Python's string order (code points), astral characters after U+FFFF, in every page size."""
    keys = ["b", "a", "B", "é", "z", "\uffff", "\U00010000", "\U0010ffff", "a\U0001f600", "a\uffff", "", "aa", "~"]
    await store.set_many([(key, b"1") for key in keys])
    for page_size in (1, 3, 1000):
        assert await all_keys(store, page_size=page_size) == sorted(keys)
        scanned = [key async for page in store.scan("", page_size) for key, _ in page]
        assert scanned == sorted(keys)
    assert await all_keys(store, "a") == sorted(k for k in keys if k.startswith("a"))


async def test_a_reserved_word_is_a_table_name(postgres_server: PostgresServer) -> None:
    """A table named by an SQL keyword works, since the name is quoted."""
    backend = await open_on(postgres_server, "order")
    try:
        await backend.set("k", b"[1]")
        assert await backend.get("k") == b"[1]"
    finally:
        await backend.close()
        postgres_server.sql('DROP TABLE IF EXISTS "order"')


# -- shared by processes ---------------------------------------------------------------------------


def test_the_registry_shares_it_between_processes() -> None:
    """Several workers and proxies may serve one postgres table: the registry says so."""
    entry = STORE_TYPES["postgres"]
    assert entry.shared_by_processes
    assert entry.server


async def test_two_stores_on_one_table_see_each_others_writes(
        postgres_server: PostgresServer, postgres_table: str) -> None:
    """Nothing is cached in a store: a write through one is what the other reads next, deletes included."""
    first = await open_on(postgres_server, postgres_table)
    second = await open_on(postgres_server, postgres_table)
    try:
        await first.set("k", b"1")
        assert await second.get("k") == b"1"
        await second.set("k", b"2")
        assert await first.get("k") == b"2"
        assert await second.delete("k")
        assert await first.get("k") is None
        assert not await first.has("k")
    finally:
        await first.close()
        await second.close()


async def test_concurrent_bulk_and_single_writes_leave_one_consistent_value(
        postgres_server: PostgresServer, postgres_table: str) -> None:
    """Two stores (as two processes) writing the same keys at once, in bulk and singly, never deadlock; each bulk write lands whole."""
    # A generous call_timeout: on a loaded machine a slow round is not what this test is about.
    first = await open_on(postgres_server, postgres_table, call_timeout=30.0)
    second = await open_on(postgres_server, postgres_table, call_timeout=30.0)
    keys = [f"k{i:03}" for i in range(300)]
    try:
        for round_ in range(5):
            a, b = json.dumps(["a", round_]).encode(), json.dumps(["b", round_]).encode()
            await asyncio.gather(
                first.set_many([(key, a) for key in keys]),
                second.set_many([(key, b) for key in reversed(keys)]),
                *(second.set(key, b) for key in keys[::50]),
            )
            values = {key: await first.get(key) for key in keys}
            singles = {key for key in keys[::50]}
            # Keys the single sets did not touch all hold the value of one bulk write: it applied whole.
            assert len({values[key] for key in keys if key not in singles}) == 1
            assert {values[key] for key in keys} <= {a, b}
    finally:
        await first.close()
        await second.close()


async def test_a_bulk_load_into_an_empty_table_writes_every_row(store: PostgresBackend) -> None:
    """load_many (a migrate into an empty table: one COPY into the table) leaves what set_many would:
    every key, the last of a key given twice, equal as JSON to what was given."""
    items = [(f"k{i:04}", json.dumps({"i": i, "s": "é"}).encode()) for i in range(2500)]
    await store.load_many([*items, ("k0001", b'"last"')])
    assert await all_keys(store) == [key for key, _ in items]
    assert json.loads(await store.get("k0001") or b"") == "last"
    assert json.loads(await store.get("k2499") or b"") == {"i": 2499, "s": "é"}


#: Keys and documents that COPY's text format must escape (tab, newline, CR, backslash) or that look
#: like its markers (\\N for NULL, \\. for the end), beside plain ones.
AWKWARD_ITEMS: list[tuple[str, bytes]] = [
    ("tab\tkey", b'"a\\tb"'), ("new\nline", b'{"s": "x\\ny", "t": "\\\\"}'), ("cr\rkey", b'"\\r"'),
    ("back\\slash", b'["\\\\N", "\\\\."]'), ("\\N", b"null"), ("\\.", '"\\u00e9 é"'.encode()), ("plain", b"[1, 2.5]"),
]


@pytest.mark.parametrize("write", ["set_many", "load_many"])
async def test_bulk_writes_keep_keys_and_documents_copy_would_escape(store: PostgresBackend, write: str) -> None:
    """Both bulk writes (COPY text made for the whole batch) store each awkward key and document as given."""
    await getattr(store, write)(AWKWARD_ITEMS)
    assert sorted(await all_keys(store)) == sorted(key for key, _ in AWKWARD_ITEMS)
    for key, value in AWKWARD_ITEMS:
        assert json.loads(await store.get(key) or b"") == json.loads(value), key


async def test_a_bulk_load_meeting_a_present_key_upserts_instead(store: PostgresBackend) -> None:
    """A key already in the table fails the COPY whole; the load is then an upsert: nothing is lost
    or doubled, and the present key takes the loaded value, as set_many would give it."""
    await store.set("k2", b'"before"')
    await store.load_many([("k1", b"1"), ("k2", b"2"), ("k3", b"3")])
    assert [await store.get(key) for key in ("k1", "k2", "k3")] == [b"1", b"2", b"3"]
    assert await all_keys(store) == ["k1", "k2", "k3"]


async def test_a_bulk_load_refuses_what_jsonb_cannot_hold_before_writing(store: PostgresBackend) -> None:
    """As set_many: one document jsonb cannot hold refuses the whole load with InvalidArgument, and no row is written."""
    with pytest.raises(InvalidArgument, match="jsonb"):
        await store.load_many([("good", b"1"), ("k", b'"a\\u0000b"'), ("also", b"2")])
    assert await all_keys(store) == []


# -- a server that is down, slow or refuses us ----------------------------------------------------


async def test_a_wrong_password_is_unavailable_and_never_shown(
        postgres_server: PostgresServer, postgres_table: str) -> None:
    """Calls and probes fail with BackendUnavailable saying why, and the password given is in no message."""
    wrong = "Wrong-Secret-" + postgres_server.password[::-1]
    dsn = postgres_server.dsn.replace(postgres_server.password, wrong)
    backend = await open_on(postgres_server, postgres_table, dsn=dsn, **FAST)
    calls: list[Callable[[], Awaitable[object]]] = [backend.probe, lambda: backend.get("k"),
                                                    lambda: backend.set("k", b"1")]
    try:
        for call in calls:
            with pytest.raises(BackendUnavailable) as caught:
                await call()
            assert wrong not in str(caught.value)
            assert postgres_server.password not in str(caught.value)
        assert "password authentication failed" in str(caught.value)
    finally:
        await backend.close()


async def test_opening_while_the_server_is_down_returns_at_once(
        postgres_server: PostgresServer, postgres_table: str) -> None:
    """open() does not wait for a server that is down; probe and calls fail until it is up, then work without reopening."""
    postgres_server.stop()
    # A bound, not a speed target: open() must not wait for a server that is not there.
    backend = await asyncio.wait_for(open_on(postgres_server, postgres_table, **FAST), 1.0)
    try:
        with pytest.raises(BackendUnavailable):
            await backend.probe()
        with pytest.raises(BackendUnavailable):
            await backend.get("k")
        postgres_server.start()
        await eventually(backend.probe)
        await backend.set("k", b"1")
        assert await backend.get("k") == b"1"
    finally:
        await backend.close()


async def test_nothing_listening_is_unavailable_within_the_call_timeout(postgres_table: str,
                                                                        postgres_server: PostgresServer) -> None:
    """A dsn naming a port where nothing listens gives BackendUnavailable naming the address, not a hang."""
    dsn = f"postgresql://turnout:{postgres_server.password}@127.0.0.1:{_free_port()}/turnout"
    backend = await open_on(postgres_server, postgres_table, dsn=dsn, **FAST)
    try:
        with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1") as caught:
            await asyncio.wait_for(backend.get("k"), 10 * FAST["call_timeout"])  # a bound against hanging
        assert postgres_server.password not in str(caught.value)
    finally:
        await backend.close()


async def test_a_server_stopped_and_started_again_is_reconnected(
        postgres_server: PostgresServer, fast_store: PostgresBackend) -> None:
    """Calls fail with BackendUnavailable while the server is down and succeed again once it is back, on the same store."""
    backend = fast_store
    await asyncio.gather(*(backend.set(f"k{i}", b"1") for i in range(20)))  # several pooled connections
    postgres_server.stop()
    calls: list[Callable[[], Awaitable[object]]] = [lambda: backend.get("k1"), lambda: backend.set("k2", b"2"),
                                                    backend.probe]
    for call in calls:
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(call(), 10 * FAST["call_timeout"])  # a bound against hanging
    postgres_server.start()
    await eventually(lambda: backend.get("k1"))
    # Once one call succeeds the dead connections are gone: every following call succeeds.
    assert await asyncio.gather(*(backend.get(f"k{i}") for i in range(20))) == [b"1"] * 20
    await backend.set("k2", b"3")
    assert await backend.get("k2") == b"3"


async def test_a_call_the_server_holds_up_is_abandoned_at_the_call_timeout(
        postgres_server: PostgresServer, postgres_table: str, fast_store: PostgresBackend) -> None:
    """A write stuck behind another session's lock fails with BackendUnavailable at call_timeout; the store works after."""
    backend = fast_store
    await backend.set("k", b"1")
    import psycopg

    async with await psycopg.AsyncConnection.connect(postgres_server.dsn) as blocker:
        await blocker.execute(f"LOCK TABLE {postgres_table} IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(BackendUnavailable, match="no answer within"):
            await asyncio.wait_for(backend.get("k"), 10 * FAST["call_timeout"])  # a bound against hanging
        await blocker.rollback()
    assert await backend.get("k") == b"1"
    await backend.set("k", b"2")
    assert await backend.get("k") == b"2"


async def test_close_is_idempotent_and_calls_after_it_are_refused(store: PostgresBackend) -> None:
    """A closed store refuses calls with BackendUnavailable; closing again is harmless."""
    await store.set("k", b"1")
    await store.close()
    await store.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        await store.get("k")


def test_validate_for_a_postgres_target_lists_what_it_would_refuse(tmp_path: Path) -> None:
    """validate with target postgres finds NUL in keys, strings and member names; without a target it finds none."""
    path = tmp_path / "legacy.json"
    path.write_text('{"nul\\u0000key": 1, "s": "a\\u0000b", "m": {"x\\u0000": 1}, "slash": "\\\\u0000", "ok": 1}')
    found = validate_jsonfile(path, 1 << 20, target="postgres")
    assert dict(found.by_problem) == {"key_holds_nul": 1, "string_holds_nul": 2}
    assert {s["key"] for s in found.samples} == {"nul\\x00key", "s", "m"}
    assert validate_jsonfile(path, 1 << 20).ok


async def test_a_role_that_may_only_use_the_table_works(
        store: PostgresBackend, postgres_server: PostgresServer, postgres_table: str) -> None:
    """A role granted the rows of an existing table, but neither CREATE nor TEMP, reads and writes it, set_many included."""
    await store.set("k", b"1")  # the table exists, created by its owner
    role = f"limited_{postgres_table}"
    postgres_server.sql(f"CREATE ROLE {role} LOGIN PASSWORD 'limited-pw'", user="postgres")
    postgres_server.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {postgres_table} TO {role}")
    postgres_server.sql("REVOKE TEMP ON DATABASE turnout FROM PUBLIC")
    dsn = f"postgresql://{role}:limited-pw@127.0.0.1:{postgres_server.port}/turnout"
    limited = await open_on(postgres_server, postgres_table, dsn=dsn)
    try:
        await limited.set_many([(f"m{i}", str(i).encode()) for i in range(2500)] + [("k", b"2")])
        assert await store.get("m2499") == b"2499"
        assert await store.get("k") == b"2"
        assert len(await all_keys(limited, "m")) == 2500
    finally:
        await limited.close()
        postgres_server.sql("GRANT TEMP ON DATABASE turnout TO PUBLIC")
        postgres_server.sql(f"DROP OWNED BY {role}; DROP ROLE {role}", user="postgres")


async def test_no_write_is_left_waiting_in_line(store: PostgresBackend) -> None:
    """After writes issued together to shared keys, bulk and single, the write order holds no key."""
    await asyncio.gather(*(store.set("k", str(i).encode()) for i in range(50)),
                         store.set_many([("k", b"\"bulk\""), ("j", b"1")]), store.delete("j"))
    assert len(store._order) == 0


@pytest.mark.parametrize(("dsn", "fine"), [
    ("postgresql://app:pw@db:5432/app", True), ("postgres://db/app", True),
    ("host=db port=5432 dbname=app password='p w'", True),
    ("db.example:5432/app", False), ("mysql://db/app", False),
])
def test_config_refuses_a_dsn_libpq_cannot_read(dsn: str, fine: bool) -> None:
    """A dsn is a postgresql:// URL or libpq key=value pairs; anything else is a config error naming the field."""
    from proxy.backends.serveroptions import check_postgres

    if fine:
        check_postgres({"dsn": dsn, "table": "kv"})
    else:
        with pytest.raises(ValueError, match=r"^dsn: "):
            check_postgres({"dsn": dsn, "table": "kv"})


async def test_single_writes_issued_together_are_each_answered(store: PostgresBackend) -> None:
    """Hundreds of concurrent sets and deletes (committed in shared batches) each get their own answer."""
    await store.set_many([(f"old{i}", b"0") for i in range(0, 400, 2)])
    answers = await asyncio.gather(*(store.delete(f"old{i}") for i in range(400)),
                                   *(store.set(f"new{i}", str(i).encode()) for i in range(400)))
    assert answers[:400] == [i % 2 == 0 for i in range(400)]
    assert await all_keys(store, "old") == []
    assert [await store.get(f"new{i}") for i in range(0, 400, 37)] == [str(i).encode() for i in range(0, 400, 37)]


async def test_a_write_the_server_refuses_fails_alone(store: PostgresBackend) -> None:
    """A set the server refuses (here text that is not JSON, which the proxy would have refused first)
    fails with InvalidArgument while the writes batched beside it succeed."""
    results = await asyncio.gather(*(store.set(f"k{i}", b"not json" if i == 50 else b"1") for i in range(100)),
                                   return_exceptions=True)
    assert isinstance(results[50], InvalidArgument)
    assert [r for i, r in enumerate(results) if i != 50] == [None] * 99
    assert await store.get("k50") is None
    assert len(await all_keys(store)) == 99


async def test_a_key_with_a_lone_surrogate_is_refused_alone(store: PostgresBackend) -> None:
    """A key with no UTF-8 form is refused with InvalidArgument, found nowhere, and fails none of the writes beside it."""
    results = await asyncio.gather(*(store.set("bad\ud800" if i == 5 else f"k{i}", b"1") for i in range(20)),
                                   return_exceptions=True)
    assert isinstance(results[5], InvalidArgument)
    assert results[:5] + results[6:] == [None] * 19
    assert await store.get("bad\ud800") is None
    assert not await store.delete("bad\ud800")
    assert len(await all_keys(store)) == 19
