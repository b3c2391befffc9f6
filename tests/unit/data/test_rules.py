"""Comparison rules applied: ignored paths, the numeric tolerance, expiry, and the hits they count,
alone and in shadow mode's comparison (a real ShadowLane over memory backends and a real log)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from proxy.backends.memory import MemoryBackend
from proxy.data.backendcall import BackendCalls, Call
from proxy.data.compare import compare_values
from proxy.data.discrepancies import DiscrepancyLog
from proxy.data.rules import RuleHits, equal_under, rule_for, rules_document
from proxy.data.shadow import ShadowLane, show_value
from proxy.data.valuediff import MAX_NODES
from proxy.routing.comparisonrules import ComparisonRule
from proxy.routing.flagfile import parse_flags
from proxy.routing.flags import Flags
from proxy.routing.router import Op, Route, Router
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.tracing import Telemetry

FAR = dt.date(2999, 12, 31)


def rule(*ignore: str, tolerance: float = 0.0, keys: str = "", expires: dt.date = FAR) -> ComparisonRule:
    return ComparisonRule(keys=keys, owner="team", expires=expires, ignore_fields=ignore, numeric_tolerance=tolerance)


def doc(value: object) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize(("ignore", "a", "b", "equal"), [
    (("$.updated_at",), {"n": 1, "updated_at": 5}, {"n": 1, "updated_at": 6}, True),
    (("$.updated_at",), {"n": 1, "updated_at": 5}, {"n": 2, "updated_at": 6}, False),
    (("$.updated_at",), {"n": 1, "updated_at": 5}, {"n": 1}, True),  # on one side only: ignored too
    (("$.meta.etag",), {"meta": {"etag": "a", "v": 1}}, {"meta": {"etag": "b", "v": 1}}, True),
    (("$.meta.etag",), {"meta": {"etag": "a", "v": 1}}, {"meta": {"etag": "b", "v": 2}}, False),
    (("$.meta",), {"meta": {"etag": "a"}}, {"meta": [1, 2]}, True),  # a whole subtree
    (('$["odd key"]',), {"odd key": 1, "x": 0}, {"odd key": 2, "x": 0}, True),
    (("$.items[*].seen",), {"items": [{"id": 1, "seen": 1}, {"id": 2, "seen": 1}]},
     {"items": [{"id": 1, "seen": 9}, {"id": 2, "seen": 8}]}, True),
    (("$.items[*].seen",), {"items": [{"id": 1, "seen": 1}]}, {"items": [{"id": 3, "seen": 9}]}, False),
    (("$.items[1]",), {"items": [1, 2, 3]}, {"items": [1, 9, 3]}, True),
    (("$.items[1]",), {"items": [1, 2, 3]}, {"items": [0, 9, 3]}, False),
    (("$.items[1]",), {"items": [1, 2]}, {"items": [1, 2, 3]}, False),  # a longer list is a difference
    (("$.items[0].a", "$.items[*].b"), {"items": [{"a": 1, "b": 1, "c": 1}]}, {"items": [{"a": 2, "b": 2, "c": 1}]}, True),
    (("$.items[0].a", "$.items[*].b"), {"items": [{"a": 1, "b": 1}, {"a": 1}]}, {"items": [{"a": 2, "b": 2}, {"a": 2}]},
     False),  # [0].a is the first item's alone
    (("$.a", "$.a.b"), {"a": {"b": 1, "c": 1}}, {"a": 2}, True),  # the shorter path wins
    (("$.flag",), {"flag": True, "n": 1}, {"flag": 1, "n": True}, False),  # true is still not 1 elsewhere
])
def test_ignored_paths(ignore: tuple[str, ...], a: object, b: object, equal: bool) -> None:
    """A difference at an ignored path (or below it) is none; one anywhere else still is."""
    assert equal_under(rule(*ignore), doc(a), doc(b)) is equal


@pytest.mark.parametrize(("tolerance", "a", "b", "equal"), [
    (0.001, {"price": 10.0}, {"price": 10.0005}, True),
    (0.001, {"price": 10.0}, {"price": 10.01}, False),
    (0.5, [1, 2, 3], [1.4, 2, 2.6], True),
    (0.5, {"n": 1}, {"n": "1"}, False),  # a string is no number, whatever the tolerance
    (1.0, {"n": True}, {"n": 1}, False),
    (1.0, {"n": 10 ** 400}, {"n": 1.0}, False),  # no OverflowError: simply not close
    (1.0, {"n": 10 ** 30}, {"n": 10 ** 30 + 1}, True),  # integers past 64 bits, exactly
])
def test_numeric_tolerance_is_absolute(tolerance: float, a: object, b: object, equal: bool) -> None:
    assert equal_under(rule(tolerance=tolerance), doc(a), doc(b)) is equal


def test_documents_that_do_not_parse_or_are_too_large_stay_different() -> None:
    """No rule excuses what it cannot read or walk whole."""
    assert not equal_under(rule("$.a"), b"{not json", b'{"a": 1}')
    big_a, big_b = doc({"a": 1, "rest": list(range(MAX_NODES))}), doc({"a": 2, "rest": list(range(MAX_NODES))})
    assert not equal_under(rule("$.a"), big_a, big_b)
    assert equal_under(rule("$.a"), doc({"a": 1, "rest": list(range(100))}), doc({"a": 2, "rest": list(range(100))}))


def test_legacy_numbers_the_fast_parser_refuses_still_compare() -> None:
    """NaN in a legacy document: read by the standard library, as compare.py does."""
    assert equal_under(rule("$.t"), b'{"v": NaN, "t": 1}', b'{"v": NaN, "t": 2}') is False  # NaN != NaN
    assert equal_under(rule("$.v"), b'{"v": NaN, "t": 1}', b'{"v": 1, "t": 1}') is True


def test_the_first_live_matching_rule_applies_and_an_expired_one_never_does() -> None:
    expired = rule("$.a", keys="^s:", expires=dt.date(2020, 1, 1))
    live = rule("$.b", keys="^s:")
    flags = Flags(comparison_rules=(expired, live, rule("$.a", keys="")))
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp()
    assert rule_for(flags, "s:1", now) == (1, live)
    assert rule_for(flags, "t:1", now) == (2, flags.comparison_rules[2])
    hits = RuleHits()
    applied = hits.apply(flags, "s:1", doc({"a": 1}), doc({"a": 2}), now)
    assert applied is not None
    assert (applied.index, applied.excused) == (1, False)
    assert "comparison rule 1" in applied.note()
    assert "owner team" in applied.note()
    assert hits.of(expired) == hits.of(live) == 0
    applied = hits.apply(flags, "s:1", doc({"b": 1}), doc({"b": 2}), now)
    assert applied is not None
    assert applied.excused
    assert hits.by_index(flags) == {"0": 0, "1": 1, "2": 0}


def test_a_rule_applies_through_its_last_day_utc() -> None:
    """`expires: 2026-12-31` applies all of that day (UTC) and stops at 2027-01-01 00:00 UTC."""
    last = rule("$.a", expires=dt.date(2026, 12, 31))
    end = dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()
    assert not last.expired(end - 1)
    assert last.expired(end)
    document = rules_document(Flags(comparison_rules=(last,)), {"0": 4}, now=end)
    assert document == [{"rule": 0, "keys": "", "ignore_fields": ["$.a"], "owner": "team", "expires": "2026-12-31",
                         "expired": True, "hits": 4}]


def test_hits_survive_a_reload_of_the_same_rule_and_restart_for_an_edited_one() -> None:
    text = "comparison_rules:\n  - {keys: '', owner: o, expires: 2999-01-01, ignore_fields: [$.t]}\n"
    hits = RuleHits()
    first = parse_flags(text)
    hits.apply(first, "k", doc({"t": 1}), doc({"t": 2}))
    assert hits.by_index(parse_flags(text)) == {"0": 1}  # a reload: a new Flags, an equal rule
    assert hits.by_index(parse_flags(text.replace("o,", "other,"))) == {"0": 0}


def lane(tmp_path: Path) -> tuple[ShadowLane, MemoryBackend]:
    new = MemoryBackend()
    calls = BackendCalls({Route.OLD: MemoryBackend(), Route.NEW: new}, Metrics(), Telemetry(enabled=False))
    return ShadowLane(calls, DiscrepancyLog(tmp_path)), new


async def compare(shadows: ShadowLane, new: MemoryBackend, flags: Flags, key: str, primary: bytes,
                  shadow: bytes) -> None:
    await new.set(key, shadow)
    router = Router(flags)
    decision = router.route(Op.GET, key)
    call = shadows.start(Op.GET, key, decision, router, Call(), new.get(key))
    assert call is not None
    call.compare(primary, compare_values, show_value)
    await shadows.drain()


async def test_in_shadow_mode_an_excused_difference_is_a_hit_and_no_discrepancy(tmp_path: Path) -> None:
    """The lane counts the comparison and the rule's hit; the log records nothing for it. A difference
    the rule does not cover is recorded, its detail naming the rule that applied."""
    shadows, new = lane(tmp_path)
    session = rule("$.updated_at", keys="^session:")
    flags = Flags(use_new_storage=True, shadow_mode_enabled=True, comparison_rules=(session,))
    await compare(shadows, new, flags, "session:1", doc({"u": 1, "updated_at": 1}), doc({"u": 1, "updated_at": 2}))
    report = shadows.discrepancies.report
    assert (report.compared["get"], report.total, shadows.counters.rule_hits.of(session)) == (1, 0, 1)
    await compare(shadows, new, flags, "session:2", doc({"u": 1, "updated_at": 1}), doc({"u": 2, "updated_at": 2}))
    await compare(shadows, new, flags, "cart:1", doc({"updated_at": 1}), doc({"updated_at": 2}))  # not its keys
    assert (report.compared["get"], report.total, shadows.counters.rule_hits.of(session)) == (3, 2, 1)
    details = {d.key: d.detail for d in report.latest}
    assert "comparison rule 0" in details["session:2"]
    assert details["cart:1"] == ""


async def test_an_expired_rule_leaves_the_difference_recorded(tmp_path: Path) -> None:
    shadows, new = lane(tmp_path)
    stale = rule("$.updated_at", expires=dt.date.today() - dt.timedelta(days=2))
    flags = Flags(use_new_storage=True, shadow_mode_enabled=True, comparison_rules=(stale,))
    await compare(shadows, new, flags, "k", doc({"updated_at": 1}), doc({"updated_at": 2}))
    assert (shadows.discrepancies.report.total, shadows.counters.rule_hits.of(stale)) == (1, 0)


async def test_an_agreeing_comparison_never_looks_at_a_rule(tmp_path: Path) -> None:
    """Equal documents (by bytes, or as JSON) are decided before any rule: no hit is counted."""
    shadows, new = lane(tmp_path)
    everything = rule(tolerance=1.0)
    flags = Flags(use_new_storage=True, shadow_mode_enabled=True, comparison_rules=(everything,))
    await compare(shadows, new, flags, "k", b'{"a": 1}', b'{"a":1.0}')
    await compare(shadows, new, flags, "k", b'{"a": 1}', b'{"a": 1.5}')
    assert (shadows.discrepancies.report.total, shadows.counters.rule_hits.of(everything)) == (0, 1)
