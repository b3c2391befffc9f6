"""Key-space coverage: prefixes, shadow mode's distinct keys (bounded), verify's per-prefix counts in
its record, and the document status shows of the two together (also merged over workers)."""

from __future__ import annotations

from pathlib import Path

from proxy import statedir
from proxy.backends.jsondir import JsonDirBackend
from proxy.backends.memory import MemoryBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.data.coverage import OTHER, ShadowCoverage, VerifyTally, coverage_document, prefix_of
from proxy.migration.stores import Stores
from proxy.migration.verify import compare_stores, verify
from proxy.routing.flags import Flags
from proxy.routing.router import Router
from proxy.workers.relay import merge_counts


def test_a_prefix_is_the_key_up_to_its_first_colon() -> None:
    assert [prefix_of(k) for k in ("session:42", "a:b:c", "plain", ":x", "")] == ["session:", "a:", "", ":", ""]


def test_shadow_coverage_counts_distinct_keys_by_prefix_and_when() -> None:
    moments = iter([1.0, 10.0, 11.0, 12.0, 13.0, 14.0])
    coverage = ShadowCoverage(clock=lambda: next(moments))
    for key in ("s:1", "s:2", "s:1", "c:1", "nocolon"):
        coverage.compared(key)
    prefixes = coverage.document()["prefixes"]
    assert prefixes["s:"] == {"compared": 2, "compared_at_least": 2, "untracked": 0, "last_compared_unix": 12.0}
    assert (prefixes["c:"]["compared"], prefixes[""]["compared"]) == (1, 1)


def test_shadow_coverage_is_bounded_and_then_says_at_least() -> None:
    """Past the bound of keys, new keys are counted as untracked (a lower bound); past the bound of
    prefixes, a new prefix's keys go under OTHER."""
    coverage = ShadowCoverage(max_keys=3, max_prefixes=2)
    for key in ("a:1", "a:2", "b:1", "a:3", "a:1", "c:1", "d:1"):
        coverage.compared(key)
    prefixes = coverage.document()["prefixes"]
    assert set(prefixes) == {"a:", "b:", OTHER}
    assert (prefixes["a:"]["compared"], prefixes["a:"]["untracked"]) == (2, 1)  # a:3 past the bound; a:1 seen
    assert (prefixes[OTHER]["compared"], prefixes[OTHER]["untracked"]) == (0, 2)
    shown = coverage_document(coverage.document(), None, None)["prefixes"]
    assert [row["shadow"]["at_least"] for row in shown] == [row["prefix"] != "b:" for row in shown]


def test_verify_tally_and_a_cleared_difference() -> None:
    tally = VerifyTally(max_prefixes=2)
    for key in ("a:1", "a:2", "b:1"):
        tally.agree(key)
    tally.differ("a:3")
    tally.differ("z:1")  # a third prefix: OTHER
    tally.differ("a:4")
    tally.cleared("a:4")
    tally.cleared("z:1", gone=True)
    assert tally.to_document() == {"a:": {"keys": 4, "agree": 3, "differ": 1}, "b:": {"keys": 1, "agree": 1, "differ": 0},
                                   OTHER: {"keys": 0, "agree": 0, "differ": 0}}


async def _stores(tmp_path: Path, ordered: bool) -> tuple[SqliteBackend | JsonDirBackend, MemoryBackend]:
    old = await SqliteBackend.open(tmp_path / "old.sqlite") if ordered else await JsonDirBackend.open(tmp_path / "dir")
    new = MemoryBackend()
    for key in ("user:1", "user:2", "user:3", "cart:1", "loose"):
        await old.set(key, b'{"v": 1}')
    for key in ("user:1", "user:2", "cart:1", "cart:9"):
        await new.set(key, b'{"v": 1}' if key != "user:2" else b'{"v": 2}')
    return old, new


async def test_verify_records_keys_by_prefix(tmp_path: Path) -> None:
    """Both scans (merged, and an unordered store read in memory) count every key of either store by
    prefix, agreeing or differing, and the record in state_dir holds them."""
    expected = {"": {"keys": 1, "agree": 0, "differ": 1}, "cart:": {"keys": 2, "agree": 1, "differ": 1},
                "user:": {"keys": 3, "agree": 1, "differ": 2}}
    for ordered in (True, False):
        folder = tmp_path / str(ordered)
        folder.mkdir()
        old, new = await _stores(folder, ordered)
        assert (await compare_stores(old, new)).to_document()["prefixes"] == expected
        await verify(Stores(old, new, Router(Flags())), record_in=folder)
        record, _ = statedir.last_verify(folder)
        assert record is not None
        assert record["prefixes"] == expected
        await old.close()


def test_coverage_document_puts_verify_and_shadow_side_by_side() -> None:
    shadow = ShadowCoverage(clock=lambda: 100.0)
    for i in range(25):
        shadow.compared(f"user:{i}")
    shadow.compared("new:1")
    record = {"prefixes": {"user:": {"keys": 100, "agree": 99, "differ": 1}, "cart:": {"keys": 5, "agree": 5, "differ": 0}}}
    doc = coverage_document(shadow.document(), record, 50.0)
    rows = {row["prefix"]: row for row in doc["prefixes"]}
    assert rows["user:"]["keys"] == 100
    assert rows["user:"]["verified"] == {"keys": 100, "agree": 99, "differ": 1, "at_unix": 50.0}
    assert rows["user:"]["shadow"] == {"compared": 25, "compared_at_most": 25, "at_least": False, "share": 0.25,
                                       "last_unix": 100.0}
    assert rows["cart:"]["shadow"] is None
    assert rows["new:"]["keys"] is None
    assert rows["new:"]["shadow"]["share"] is None
    assert doc["verify_unix"] == 50.0
    assert doc["verify_has_prefixes"]
    assert coverage_document(None, None, None)["prefixes"] == []


def test_under_workers_the_share_uses_the_lower_bound() -> None:
    """Worker 0 adds the workers' documents up: `compared` summed (a key two workers compared counts
    twice), `compared_at_least` the highest of one worker's, the latest moment."""
    one, two = ShadowCoverage(clock=lambda: 5.0), ShadowCoverage(clock=lambda: 7.0)
    for i in range(10):
        one.compared(f"u:{i}")
    for i in range(5, 20):
        two.compared(f"u:{i}")
    merged = merge_counts(one.document(), two.document())
    row = coverage_document(merged, {"prefixes": {"u:": {"keys": 40, "agree": 40, "differ": 0}}}, 1.0)["prefixes"][0]
    assert row["shadow"] == {"compared": 15, "compared_at_most": 25, "at_least": False, "share": 15 / 40,
                             "last_unix": 7.0}
