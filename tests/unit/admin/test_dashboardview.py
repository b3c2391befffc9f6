"""The dashboard's document: the phase rule, the confidence score's terms and bounds, the series, and
/dashboard.json served by a real HTTP side over a real data plane."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from proxy.admin.confidence import FORMULA, Evidence, confidence, score_terms
from proxy.admin.dashboardview import (
    build_document,
    coverage_view,
    jobs_document,
    migration_phase,
    rollbacks_document,
    rules_view,
    series,
)
from proxy.admin.http import HttpSide
from proxy.admin.jobs import job_board
from proxy.data.coverage import ShadowCoverage, VerifyTally, coverage_document
from proxy.data.dispatcher import Call
from proxy.data.rules import rules_document
from proxy.migration.verify import VerifyResult
from proxy.progress import Progress
from proxy.routing.flagfile import parse_flags
from proxy.safety.history import History
from proxy.safety.window import HealthWindow
from tests.unit.admin.conftest import Side

OFF: dict[str, Any] = {"active": False}


def flags(new: bool = True, shadow: bool = False, read: float = 0, write: float = 0, **extra: Any) -> dict[str, Any]:
    return {"use_new_storage": new, "shadow_mode_enabled": shadow,
            "traffic_percentage": {"read": read, "write": write}, **extra}


def canary(step: int, steps: list[float], state: str) -> dict[str, Any]:
    return {"active": True, "step": step, "steps": steps, "percentage": steps[step], "state": state, "reason": ""}


@pytest.mark.parametrize(("flag_doc", "override", "canary_doc", "number", "name"), [
    (flags(new=False, shadow=True, read=50), OFF, OFF, 0, "old_only"),
    (flags(), OFF, OFF, 0, "old_only"),
    (flags(shadow=True), OFF, OFF, 1, "shadow"),
    (flags(shadow=True, read=10, write=0), OFF, OFF, 2, "gradual"),
    (flags(read=50, write=50), OFF, OFF, 2, "gradual"),
    (flags(read=100, write=60), OFF, OFF, 3, "gradual"),
    (flags(enabled_for_keys=["^user:"]), OFF, OFF, 2, "gradual"),
    (flags(read=100, write=100), OFF, OFF, 4, "cut_over"),
    (flags(read=5, write=5), OFF, canary(0, [5, 25, 100], "advancing"), 2, "canary"),
    (flags(read=100, write=100), OFF, canary(2, [5, 25, 100], "advancing"), 3, "canary"),
    (flags(read=100, write=100), OFF, canary(2, [5, 25, 100], "done"), 4, "cut_over"),
    (flags(read=25, write=25), OFF, canary(1, [5, 25, 100], "rolled_back"), None, "rolled_back"),
    (flags(shadow=True), {"active": True, "route": "new", "reason": "cutover"}, OFF, 4, "cut_over"),
    (flags(read=100, write=100), {"active": True, "route": "old", "reason": "drill"}, OFF, None, "rolled_back"),
])
def test_the_phase_follows_the_override_then_the_canary_then_the_shares(
        flag_doc: dict[str, Any], override: dict[str, Any], canary_doc: dict[str, Any], number: int | None,
        name: str) -> None:
    """An override decides first, then use_new_storage, the canary, the shares, and shadow mode last."""
    phase = migration_phase(flag_doc, override, canary_doc)
    assert (phase.number, phase.name) == (number, name)


def test_an_automatic_rollback_names_its_trigger_with_measured_and_threshold() -> None:
    """The rolled-back phase of the guard's override says which trigger, what was measured, the threshold."""
    override = {"active": True, "route": "old", "automatic": True, "reason": "automatic rollback: ...",
                "trigger": {"name": "error_rate", "measured": 0.25, "threshold": 0.05, "detail": "5 of 20"}}
    phase = migration_phase(flags(read=50, write=50), override, OFF)
    assert phase.text == "rolled back automatically: error_rate 0.25 > 0.05"
    assert migration_phase(flags(read=30, write=10), OFF, OFF).text == \
        "2 gradual switchover at 30 % reads, 10 % writes"
    assert migration_phase(flags(), OFF, canary(1, [5, 25, 100], "holding")).text == \
        "canary step 2 of 3 at 25 % (holding)"


PERFECT = Evidence(compared=10_000, discrepancy_bound=0.0, new_error_rate=0.0, latency_increase=0.0,
                   conclusive=True, unhealthy_backends=0, replication_age_s=0.0, verify_clean=True)
WORST = Evidence(compared=10, discrepancy_bound=0.5, new_error_rate=1.0, latency_increase=50.0, conclusive=False,
                 unhealthy_backends=2, replication_age_s=3600.0, verify_clean=False)


def test_the_score_is_100_with_perfect_evidence_and_0_with_the_worst() -> None:
    """No penalty at all gives 100; every figure at its worst stops at 0, never below."""
    best = confidence(PERFECT)
    assert (best["score"], best["formula"]) == (100, FORMULA)
    assert [t["penalty"] for t in best["terms"]] == [0] * 7
    assert confidence(WORST)["score"] == 0
    assert confidence(WORST)["exact"] == 0.0
    assert [t.name for t in score_terms(PERFECT)] == ["discrepancies", "errors", "latency", "inconclusive",
                                                      "unhealthy_backends", "replication_lag", "verify"]


def test_each_penalty_is_its_weight_times_the_share_of_its_threshold_capped_at_its_weight() -> None:
    """Half the threshold costs half the weight; ten times the threshold costs the weight, no more."""
    half = {t.name: t.penalty for t in score_terms(replace(PERFECT, discrepancy_bound=0.0005, new_error_rate=0.005,
                                                           latency_increase=0.1, replication_age_s=30.0))}
    assert half == {"discrepancies": 20, "errors": 12.5, "latency": 7.5, "inconclusive": 0, "unhealthy_backends": 0,
                    "replication_lag": 5, "verify": 0}
    capped = {t.name: t.penalty for t in score_terms(replace(PERFECT, discrepancy_bound=0.01, new_error_rate=0.1,
                                                             latency_increase=2.0, replication_age_s=600.0,
                                                             unhealthy_backends=5))}
    assert capped == {"discrepancies": 40, "errors": 25, "latency": 15, "inconclusive": 0,
                      "unhealthy_backends": 30, "replication_lag": 10, "verify": 0}
    assert confidence(replace(PERFECT, discrepancy_bound=0.0005))["score"] == 80


def test_no_comparison_and_no_verify_cost_fixed_penalties_and_latency_is_skipped_without_both_stores() -> None:
    """Nothing compared costs 10 (not 40); no verify 10; latency unmeasured costs nothing."""
    terms = {t.name: t for t in score_terms(replace(PERFECT, compared=0, verify_clean=None, latency_increase=None))}
    assert (terms["discrepancies"].penalty, terms["discrepancies"].measured) == (10, None)
    assert terms["verify"].penalty == 10
    assert terms["verify"].text == "no verify recorded"
    assert terms["latency"].penalty == 0
    assert confidence(replace(PERFECT, compared=0, verify_clean=None))["score"] == 80


@pytest.mark.parametrize("worse", [
    {"discrepancy_bound": 0.0002}, {"discrepancy_bound": 0.002}, {"new_error_rate": 0.004}, {"new_error_rate": 0.5},
    {"latency_increase": 0.05}, {"latency_increase": 4.0}, {"conclusive": False}, {"unhealthy_backends": 1},
    {"unhealthy_backends": 3}, {"replication_age_s": 12.0}, {"replication_age_s": 1e6}, {"verify_clean": False},
    {"verify_clean": None},
])
def test_the_score_never_rises_when_one_figure_gets_worse(worse: dict[str, Any]) -> None:
    """Monotone in every term: from any of several starting points, one worse figure lowers or keeps the score."""
    middle = Evidence(compared=500, discrepancy_bound=0.0005, new_error_rate=0.002, latency_increase=0.1,
                      conclusive=True, unhealthy_backends=0, replication_age_s=5.0, verify_clean=True)
    for start in (PERFECT, middle, WORST):
        moved = {name: value for name, value in worse.items()
                 if _worse(name, value, getattr(start, name))}
        before = confidence(start)["exact"]
        after = confidence(replace(start, **moved))["exact"]
        assert 0 <= after <= before <= 100


def _worse(name: str, value: Any, current: Any) -> bool:
    """Whether value is a worse figure than current for that field (only those moves are tried)."""
    if name == "conclusive":
        return current is True
    if name == "verify_clean":
        return current is True or (current is False and value is None)
    return bool(value > current)


def test_the_thresholds_are_the_flag_files_triggers_where_armed() -> None:
    """A discrepancy_rate trigger of 0.01 makes a bound of 0.005 cost half its weight."""
    status = {"flags": {"rollback_triggers": {"discrepancy_rate": 0.01}},
              "health": {"window": {"discrepancies": {"compared": 1000, "bound_high": 0.005}},
                         "evaluation": {"conclusive": True}}, "backends": []}
    doc = build_document(status, [], [], {}, rollbacks_document(Counter(), status), True, 1.0)
    terms = {t["name"]: t for t in doc["confidence"]["terms"]}
    assert (terms["discrepancies"]["threshold"], terms["discrepancies"]["penalty"]) == (0.01, 20)
    assert terms["errors"]["threshold"] == 0.01  # not armed: the default


def test_series_and_now_come_from_the_guards_history() -> None:
    """Each history point becomes one value per line, oldest first; the newest gives the big numbers."""
    history = History(interval_s=5.0)
    window = HealthWindow()
    for t in (0.0, 5.0, 10.0):
        history.observe(1000.0 + t, window)
    points = history.points()
    got = series(points)
    assert got["time"] == [1000.0, 1005.0, 1010.0]
    assert got["calls_per_second"] == {"old": [0.0] * 3, "new": [0.0] * 3}
    assert set(got["latency"]["new"]) == {"p50", "p95", "p99"}
    assert set(got) == {"time", "calls_per_second", "error_rate", "latency", "discrepancy_rate", "discrepancy_bound",
                        "replication_depth", "replication_age"}
    doc = build_document({}, points, [], {}, rollbacks_document(Counter(), {}), False, 1011.0)
    assert doc["now"]["time"] == 1010.0


def test_rollbacks_count_by_trigger_and_show_the_trigger_in_force() -> None:
    """The counter of AdminState becomes totals and rows; the automatic override's trigger is shown."""
    counts: Counter[tuple[bool, str]] = Counter({(True, "error_rate"): 2, (False, "operator"): 1})
    trigger = {"name": "error_rate", "measured": 0.2, "threshold": 0.05, "detail": ""}
    status = {"override": {"active": True, "automatic": True, "route": "old", "trigger": trigger}}
    doc = rollbacks_document(counts, status)
    assert (doc["count"], doc["automatic"], doc["trigger"]) == (3, 2, trigger)
    assert doc["by_trigger"] == [{"automatic": False, "trigger": "operator", "count": 1},
                                 {"automatic": True, "trigger": "error_rate", "count": 2}]


async def test_dashboard_json_is_served_with_every_part_and_latest_discrepancies_without_values(side: Side) -> None:
    """/dashboard.json holds every part the page draws; a discrepancy shows key, kind, op, time, no values."""
    side.open()
    await side.new.inner.set("only-new", b'{"secret": 1}')
    await side.dispatcher.get("only-new", Call())
    reply = await side.get("/dashboard.json")
    assert (reply.status, reply.content_type.split(";")[0]) == (200, "application/json")
    doc = json.loads(reply.body)
    assert set(doc) == {"time", "version", "revision", "phase", "traffic", "override", "canary", "now", "series",
                        "discrepancies", "replication", "jobs", "rollbacks", "health", "confidence",
                        "coverage", "comparison_rules"}
    assert doc["phase"]["name"] == "shadow"
    assert doc["traffic"] == {"read": 0, "write": 0, "use_new_storage": True, "shadow_mode_enabled": True}
    assert doc["series"]["time"] == []  # no guard in this process: no history
    (latest,) = doc["discrepancies"]["latest"]
    assert (latest["key"], latest["kind"], latest["op"]) == ("only-new", "extra_in_shadow", "get")
    assert "primary" not in latest
    assert "secret" not in reply.body
    assert doc["jobs"] == {"migrate": {"run": None, "checkpoint": None}, "verify": {"run": None, "last": None}}
    assert doc["health"]["serving"] is True
    assert 0 <= doc["confidence"]["score"] <= 100
    assert len(doc["confidence"]["terms"]) == 7
    # The compared key is covered (no prefix); with no verify, its share is unknown and the page says why.
    (row,) = doc["coverage"]["prefixes"]
    assert (row["prefix"], row["compared"], row["keys"], row["shadow_share"]) == ("", 1, None, None)
    assert row["last_compared_unix"] is not None
    assert doc["coverage"]["note"].startswith("no verify recorded")
    assert doc["comparison_rules"] == []  # the flag file has none: the page hides the panel


def test_recorded_values_are_shown_and_unrecorded_ones_are_not() -> None:
    """A sample keeps its documents only when the log recorded them (discrepancies.record_values)."""
    sample = {"time": 1.0, "key": "k", "kind": "value_mismatch", "op": "get", "route": "old", "detail": "",
              "paths": ["$.a"], "primary": '{"a": 1}', "shadow": '{"a": 2}', "values": True}
    shown = build_document({}, [], [sample, {**sample, "key": "j", "primary": None, "shadow": None, "values": False}],
                           {}, rollbacks_document(Counter(), {}), True, 2.0)["discrepancies"]["latest"]
    assert [d["key"] for d in shown] == ["j", "k"]  # newest first
    assert "primary" not in shown[0]
    assert (shown[1]["primary"], shown[1]["shadow"]) == ('{"a": 1}', '{"a": 2}')


async def test_a_verify_run_in_the_proxy_shows_its_progress_then_its_result(side: Side) -> None:
    """The job board records a running verify's keys done, then its end and result, for /dashboard.json."""
    progress = Progress("verify", None, enabled=False)
    release = asyncio.Event()

    async def run() -> VerifyResult:
        progress.advance(7)
        await release.wait()
        return VerifyResult(old_records=7, new_records=7)

    job = asyncio.create_task(run())
    job_board(side.state.state_dir).track("verify", progress, job)
    await asyncio.sleep(0)
    running = jobs_document(side.state)["verify"]["run"]
    assert (running["running"], running["done"], running["result"]) == (True, 7, None)
    release.set()
    await job
    ended = jobs_document(side.state)["verify"]["run"]
    assert (ended["running"], ended["error"], ended["result"]["clean"]) == (False, "", True)
    assert ended["finished_unix"] >= ended["started_unix"]


async def test_with_a_token_the_page_and_its_document_ask_for_it(side: Side) -> None:
    """Under admin.token_file, / and /dashboard.json answer 401 without the bearer token, 200 with it."""
    side.open()
    http = HttpSide(dataclasses.replace(side.state, admin_token="s3cret"))
    port = await http.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/", "/dashboard.json"):
                async with session.get(f"http://127.0.0.1:{port}{path}") as refused:
                    assert refused.status == 401
                async with session.get(f"http://127.0.0.1:{port}{path}",
                                       headers={"Authorization": "Bearer s3cret"}) as allowed:
                    assert allowed.status == 200
    finally:
        await http.stop()


def _clock(times: list[float]) -> Any:
    return lambda: times[0]


def test_coverage_rows_hold_the_verifys_keys_the_shadow_share_and_when() -> None:
    """Two prefixes verified (4 and 2 keys), one compared in shadow: shares of the verify's keys, the
    verify's equal share and time, and a prefix only shadow saw shows no share."""
    now = [100.0]
    shadow = ShadowCoverage(clock=_clock(now))
    for key in ("user:1", "user:2", "user:1", "item:9"):
        now[0] += 1
        shadow.compared(key)
    tally = VerifyTally()
    for key in ("user:1", "user:2", "user:3"):
        tally.agree(key)
    tally.differ("user:4")
    tally.agree("order:1")
    tally.agree("order:2")
    view = coverage_view(coverage_document(shadow.document(), {"prefixes": tally.to_document()}, 90.0))
    rows = {r["prefix"]: r for r in view["prefixes"]}
    assert list(rows) == ["item:", "order:", "user:"]
    user = rows["user:"]
    assert (user["keys"], user["compared"], user["shadow_share"], user["at_least"]) == (4, 2, 0.5, False)
    assert (user["agree"], user["differ"], user["verified_share"], user["verified_unix"]) == (3, 1, 0.75, 90.0)
    assert user["last_compared_unix"] == 103.0  # user:1 again, the third comparison
    order = rows["order:"]
    assert (order["compared"], order["shadow_share"], order["last_compared_unix"]) == (0, None, None)
    assert (order["verified"], order["verified_share"]) == (True, 1.0)
    item = rows["item:"]
    assert (item["keys"], item["compared"], item["shadow_share"], item["verified"]) == (None, 1, None, False)
    assert view["note"] == ""
    assert view["shadow_since_unix"] == 100.0


def test_coverage_past_the_tracked_keys_is_at_least_and_a_verify_without_counts_is_noted() -> None:
    """Past the tracked-keys bound a prefix's figure is a lower bound; a verify without key counts by
    prefix (an older record) leaves shares unknown, and the note says so; no verify says that instead."""
    shadow = ShadowCoverage(max_keys=2)
    for key in ("a:1", "a:2", "a:3"):
        shadow.compared(key)
    tally = VerifyTally()
    for key in ("a:1", "a:2", "a:3", "a:4"):
        tally.agree(key)
    (row,) = coverage_view(coverage_document(shadow.document(), {"prefixes": tally.to_document()}, 5.0))["prefixes"]
    assert (row["compared"], row["at_least"], row["shadow_share"]) == (2, True, 0.5)
    old_record = coverage_view(coverage_document(shadow.document(), {"clean": True}, 5.0))
    assert old_record["note"].startswith("the last verify recorded no key counts")
    assert old_record["prefixes"][0]["shadow_share"] is None
    assert coverage_view(coverage_document(shadow.document(), None, None))["note"].startswith("no verify recorded")
    empty = coverage_view(None)
    assert (empty["prefixes"], empty["verify_unix"], empty["note"][:18]) == ([], None, "no verify recorded")


def test_rules_show_hits_and_an_expired_rule_names_its_owner() -> None:
    """From status's comparison_rules: a live rule with its hits, an expired one flagged EXPIRED with
    its owner, who should remove it."""
    flags = parse_flags("""use_new_storage: true
shadow_mode_enabled: true
comparison_rules:
  - {keys: '^session:', ignore_fields: [$.updated_at], owner: payments-team, expires: 2999-12-31, reason: skew}
  - {keys: '^cart:', numeric_tolerance: 0.5, owner: carts-team, expires: 2020-01-01}
""")
    live, old = rules_view(rules_document(flags, {"0": 7, "1": 2}))
    assert (live["keys"], live["owner"], live["hits"], live["expired"], live["warning"]) == \
        ("^session:", "payments-team", 7, False, "")
    assert (live["ignore_fields"], live["reason"]) == (["$.updated_at"], "skew")
    assert (old["expires"], old["hits"], old["expired"], old["numeric_tolerance"]) == ("2020-01-01", 2, True, 0.5)
    assert old["warning"] == "EXPIRED 2020-01-01: no longer applies; owner carts-team should remove it"
    assert rules_view(None) == []
    status = {"shadow": {"comparison_rules": rules_document(flags, {})}}
    doc = build_document(status, [], [], {}, rollbacks_document(Counter(), status), True, 1.0)
    assert [r["expired"] for r in doc["comparison_rules"]] == [False, True]
