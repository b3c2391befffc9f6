"""The router follows contract §3's precedence and bucket formula exactly, for every input."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cli import main
from proxy.routing.flags import Flags
from proxy.routing.router import BUCKETS, Op, Override, Reason, Route, Router, bucket, threshold
from tests.support.paths import ROOT

READS = (Op.GET, Op.HAS, Op.KEYS)
WRITES = (Op.SET, Op.DELETE)
ON = Flags(use_new_storage=True)


def reference_bucket(key: str, salt: str) -> int:
    """The contract's formula, written out independently of the code under test."""
    digest = hashlib.sha256((salt + ":" + key).encode("utf-8")).digest()
    return sum(byte << (8 * (7 - i)) for i, byte in enumerate(digest[:8])) % 10000


def test_bucket_known_values() -> None:
    """bucket() gives the values computed by hand from the formula, so a change of formula fails."""
    assert bucket("user:1", "") == 5061  # sha256(":user:1")[:8] = 2b0ef5c7a907c0c5
    assert bucket("session:42", "") == 3482  # 3cc3071c8e3d478a
    assert bucket("user:1", "v2") == 513  # sha256("v2:user:1")[:8] = f0b9d684c583c5b1
    assert bucket("", "s") == 2920  # sha256("s:")[:8] = 05d8bd490f04e608
    assert bucket("user:1", "v2") == reference_bucket("user:1", "v2")
    assert bucket("", "") == reference_bucket("", "")


@given(st.text(), st.text(max_size=8))
def test_bucket_matches_the_reference_formula(key: str, salt: str) -> None:
    """bucket() equals an independent computation of the formula and lies in 0..9999."""
    assert bucket(key, salt) == reference_bucket(key, salt)
    assert 0 <= bucket(key, salt) < 10000


def test_kill_switch_wins_over_everything() -> None:
    """use_new_storage: false sends every operation to old, whatever else the flags say."""
    flags = Flags(use_new_storage=False, enabled_for_users=("u",), enabled_for_keys=(".",), read_percentage=100,
                  write_percentage=100)
    for op in Op:
        decision = Router(flags).route(op, "k", "u")
        assert (decision.primary, decision.reason) == (Route.OLD, Reason.KILL_SWITCH)
        assert not decision.compare  # new is out of use: no shadow calls ...
        assert not decision.replicate  # ... and no replication
    assert Router(Flags(use_new_storage=True)).route(Op.SET, "k").replicate


def test_disabled_key_wins_over_user_pattern_and_percentage() -> None:
    """A key matching disabled_for_keys stays on old even for an enabled user at 100 %."""
    flags = Flags(use_new_storage=True, disabled_for_keys=("^billing:",), enabled_for_users=("u",),
                  enabled_for_keys=("billing",), read_percentage=100, write_percentage=100)
    decision = Router(flags).route(Op.SET, "billing:9", "u")
    assert (decision.primary, decision.reason) == (Route.OLD, Reason.DISABLED_KEY)


def test_user_before_key_pattern_and_percentage() -> None:
    """An enabled caller goes to new with reason user; others fall through."""
    router = Router(Flags(use_new_storage=True, enabled_for_users=("checkout",), enabled_for_keys=("^s:",)))
    assert router.route(Op.GET, "s:1", "checkout").reason == Reason.USER
    assert router.route(Op.GET, "s:1", "search").reason == Reason.KEY_PATTERN
    assert router.route(Op.GET, "x", "search").reason == Reason.DEFAULT
    assert router.route(Op.GET, "x", None).primary == Route.OLD


def test_the_router_says_whether_a_caller_can_change_a_route() -> None:
    """by_caller (whether the server must read the caller's name) is true only when users are named and
    no kill switch or override fixes every route; wherever it is false, no caller changes a decision."""
    named = Flags(use_new_storage=True, enabled_for_users=("checkout",))
    assert Router(named).by_caller
    cases = [Router(Flags(use_new_storage=True)), Router(Flags(enabled_for_users=("checkout",))),
             Router(named, Override(Route.OLD, "test", since=0.0))]
    for router in cases:
        assert not router.by_caller
        for op in Op:
            assert router.route(op, "k", "checkout") == router.route(op, "k", None)


def test_key_patterns_are_searched_not_matched() -> None:
    """Patterns are regex searches: they match anywhere unless anchored."""
    router = Router(Flags(use_new_storage=True, enabled_for_keys=("session",)))
    assert router.route(Op.GET, "user:session:1").reason == Reason.KEY_PATTERN
    anchored = Router(Flags(use_new_storage=True, enabled_for_keys=("^session",)))
    assert anchored.route(Op.GET, "user:session:1").reason == Reason.DEFAULT


def test_patterns_with_inline_flags_work() -> None:
    """A pattern carrying its own global flags, such as (?i), is honoured beside others."""
    router = Router(Flags(use_new_storage=True, enabled_for_keys=("(?i)^session", "^cart")))
    assert router.route(Op.GET, "SESSION:1").reason == Reason.KEY_PATTERN
    assert router.route(Op.GET, "cart:1").reason == Reason.KEY_PATTERN
    assert router.route(Op.GET, "CART:1").reason == Reason.DEFAULT


def test_reads_use_the_read_percentage_and_writes_the_write_percentage() -> None:
    """At read 100 / write 0 reads go to new and writes stay old, and the other way round."""
    reads_only = Router(Flags(use_new_storage=True, read_percentage=100, write_percentage=0))
    for op in READS:
        assert reads_only.route(op, "k").primary == Route.NEW
    for op in WRITES:
        assert reads_only.route(op, "k").primary == Route.OLD
    writes_only = Router(Flags(use_new_storage=True, read_percentage=0, write_percentage=100))
    assert writes_only.route(Op.SET, "k").reason == Reason.PERCENTAGE
    assert writes_only.route(Op.GET, "k").reason == Reason.DEFAULT


def test_percentage_boundary_is_bucket_below_percentage_times_100() -> None:
    """A key goes to new exactly when bucket(key) < percentage * 100, decimals included."""
    key = "user:1"  # bucket 5061
    assert Router(Flags(use_new_storage=True, read_percentage=50.62)).route(Op.GET, key).primary == Route.NEW
    assert Router(Flags(use_new_storage=True, read_percentage=50.61)).route(Op.GET, key).primary == Route.OLD
    assert Router(Flags(use_new_storage=True, read_percentage=50.615)).route(Op.GET, key).primary == Route.NEW


def test_override_stands_above_the_file() -> None:
    """An operator override wins over the kill switch and every rule, with reason override."""
    router = Router(Flags(use_new_storage=False), Override(Route.NEW, "cutover", 0.0))
    assert (router.route(Op.GET, "k").primary, router.route(Op.GET, "k").reason) == (Route.NEW, Reason.OVERRIDE)
    back = Router(Flags(use_new_storage=True, enabled_for_users=("u",)), Override(Route.OLD, "rollback", 0.0))
    assert back.route(Op.SET, "k", "u").primary == Route.OLD


def test_shadow_mode_asks_for_comparison_with_the_other_backend() -> None:
    """With shadow mode on, every decision names the other backend as secondary and asks to compare."""
    router = Router(Flags(use_new_storage=True, shadow_mode_enabled=True, read_percentage=100))
    decision = router.route(Op.GET, "k")
    assert (decision.primary, decision.secondary, decision.compare) == (Route.NEW, Route.OLD, True)
    assert not Router(ON).route(Op.GET, "k").compare


flag_sets = st.builds(
    Flags,
    use_new_storage=st.booleans(),
    shadow_mode_enabled=st.booleans(),
    read_percentage=st.floats(0, 100),
    write_percentage=st.floats(0, 100),
    enabled_for_keys=st.sampled_from([(), ("^a",), ("b$", "c")]),
    disabled_for_keys=st.sampled_from([(), ("^b",)]),
    enabled_for_users=st.sampled_from([(), ("u",)]),
    bucket_salt=st.text(max_size=4),
)


@given(flag_sets, st.sampled_from(list(Op)), st.text(), st.sampled_from([None, "u", "v"]))
def test_same_inputs_always_give_the_same_route(flags: Flags, op: Op, key: str, caller: str | None) -> None:
    """Routing is a pure function: two routers built from one flag set agree, call after call."""
    assert Router(flags).route(op, key, caller) == Router(flags).route(op, key, caller)


@given(st.text(), st.floats(0, 100), st.floats(0, 100), st.text(max_size=4))
def test_a_key_in_a_smaller_percentage_stays_in_a_larger_one(key: str, a: float, b: float, salt: str) -> None:
    """Raising the percentage only ever moves keys to new: a key in the 10 % stays in the 50 %."""
    low, high = sorted((a, b))
    in_low = Router(Flags(use_new_storage=True, read_percentage=low, bucket_salt=salt)).route(Op.GET, key)
    in_high = Router(Flags(use_new_storage=True, read_percentage=high, bucket_salt=salt)).route(Op.GET, key)
    if in_low.primary == Route.NEW:
        assert in_high.primary == Route.NEW


@settings(max_examples=20)
@given(st.sampled_from([1, 10, 25, 50, 90]), st.text(max_size=4))
def test_proportions_are_within_tolerance(percentage: int, salt: str) -> None:
    """Over 20,000 keys the share routed to new is within five standard deviations of the percentage
    (1.8 points at 50 %): a binomial bound, so no salt hypothesis tries fails by chance, while a formula
    skewed by even two points would."""
    router = Router(Flags(use_new_storage=True, write_percentage=percentage, bucket_salt=salt))
    share = sum(router.route(Op.SET, f"user:{i}").primary == Route.NEW for i in range(20_000)) / 200
    p = percentage / 100
    assert abs(share - percentage) < 5 * math.sqrt(p * (1 - p) / 20_000) * 100


def test_a_new_salt_reshuffles_the_keys() -> None:
    """Changing bucket_salt moves a different set of keys into the percentage."""
    keys = [f"k{i}" for i in range(2000)]
    first = {k for k in keys if Router(Flags(use_new_storage=True, read_percentage=50)).route(Op.GET, k).primary
             == Route.NEW}
    salted = Router(Flags(use_new_storage=True, read_percentage=50, bucket_salt="v2"))
    second = {k for k in keys if salted.route(Op.GET, k).primary == Route.NEW}
    assert 0.3 < len(first & second) / len(first) < 0.7


def test_route_command_explains_from_a_flag_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout route KEY --flags FILE --json` gives backend, reason, bucket and revision."""
    flags = tmp_path / "flags.yaml"
    flags.write_text("revision: r1\nuse_new_storage: true\nenabled_for_users: [checkout]\n")
    assert main(["route", "user:1", "--flags", str(flags), "--user", "checkout", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["route"], result["reason"], result["bucket"], result["flags_revision"]) == (
        "new", "user", 5061, "r1")
    assert main(["route", "user:1", "--flags", str(flags), "--op", "set"]) == 0
    assert "set 'user:1' -> old (reason default, bucket 5061" in capsys.readouterr().out


def test_thresholds_take_the_percentage_as_written() -> None:
    """The bucket threshold is the decimal percentage times 100, rounded up, never skewed by binary floats."""
    assert [threshold(p) for p in (0, 0.01, 1.1, 10, 12.5, 50.615, 99.99, 100)] == [
        0, 1, 110, 1000, 1250, 5062, 9999, 10000]


@given(st.text(), st.floats(0, 100), st.text(max_size=4))
def test_percentage_rule_is_bucket_below_percentage_times_100(key: str, percentage: float, salt: str) -> None:
    """Under the percentage rule alone, new exactly when bucket < percentage * 100 (as a decimal)."""
    from decimal import Decimal

    router = Router(Flags(use_new_storage=True, read_percentage=percentage, bucket_salt=salt))
    expected = Decimal(bucket(key, salt)) < Decimal(repr(percentage)) * 100
    assert (router.route(Op.GET, key).primary == Route.NEW) == expected


def test_decision_carries_the_bucket_when_the_route_turned_on_it() -> None:
    """Between 0 and 100 % the Decision holds bucket(key); the fast paths at 0 and 100 % hash nothing."""
    between = Router(Flags(use_new_storage=True, read_percentage=50.62, bucket_salt=""))
    decision = between.route(Op.GET, "user:1")
    assert (decision.primary, decision.reason, decision.bucket) == (Route.NEW, Reason.PERCENTAGE, 5061)
    assert between.route(Op.SET, "user:1").bucket is None  # write percentage 0: no hashing
    assert between.route(Op.SET, "user:1").reason == Reason.DEFAULT
    everything = Router(Flags(use_new_storage=True, read_percentage=100))
    assert (everything.route(Op.HAS, "x").reason, everything.route(Op.HAS, "x").bucket) == (Reason.PERCENTAGE, None)


def test_keys_is_routed_with_its_prefix_and_the_read_percentage() -> None:
    """A Keys listing is routed like a read of a key equal to its prefix."""
    router = Router(Flags(use_new_storage=True, enabled_for_keys=("^session:",), write_percentage=100))
    assert router.route(Op.KEYS, "session:").reason == Reason.KEY_PATTERN
    assert router.route(Op.KEYS, "").reason == Reason.DEFAULT  # reads are at 0 %
    assert Op.KEYS.is_write is False


def test_user_rule_needs_a_caller_in_the_list() -> None:
    """No caller, or a caller not listed, does not take the user rule."""
    router = Router(Flags(use_new_storage=True, enabled_for_users=("checkout",)))
    assert router.route(Op.SET, "k", None).reason == Reason.DEFAULT
    assert router.route(Op.SET, "k", "Checkout").reason == Reason.DEFAULT
    assert router.route(Op.SET, "k", "checkout").reason == Reason.USER


def test_decisions_name_the_other_backend_as_secondary() -> None:
    """Every decision's secondary is the backend that is not its primary."""
    flags = Flags(use_new_storage=True, shadow_mode_enabled=True, enabled_for_users=("u",),
                  disabled_for_keys=("^b",), enabled_for_keys=("^e",), read_percentage=50)
    router = Router(flags)
    for key, caller in [("b1", None), ("x", "u"), ("e1", None), *((f"k{i}", None) for i in range(50))]:
        decision = router.route(Op.GET, key, caller)
        assert decision.secondary == decision.primary.other
        assert decision.compare
    for route in Route:
        fixed = Router(flags, Override(route, "test", 0.0)).route(Op.SET, "k")
        assert (fixed.primary, fixed.secondary, fixed.reason) == (route, route.other, Reason.OVERRIDE)


def test_every_bucket_is_reachable_and_in_range() -> None:
    """Over 100,000 keys, bucket() stays within 0..9999 and hits nearly every value in it."""
    seen = {bucket(f"k{i}", "") for i in range(100_000)}
    assert seen <= set(range(BUCKETS))
    assert len(seen) >= 9_990  # about 0.5 of 10,000 is expected to stay empty


def test_route_command_reads_the_flag_file_named_in_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With no --flags and no proxy answering, `turnout route` explains under the config's flag file."""
    import socket

    with socket.socket() as probe:  # a port nobody listens on, so no proxy answers
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "flags.yaml").write_text("revision: r7\nuse_new_storage: true\ntraffic_percentage: {write: 50.62}\n")
    config = tmp_path / "turnout.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\nflags: flags.yaml\nstate_dir: state\n"
        f"backends: {{old: {{type: memory}}, new: {{type: memory}}}}\nadmin: {{listen: 127.0.0.1:{port}}}\n")
    assert main(["route", "user:1", "--op", "delete", "--config", str(config), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["route"], result["reason"], result["bucket"], result["flags_revision"]) == (
        "new", "percentage", 5061, "r7")
    assert "flags.yaml" in result["source"]


def test_route_command_refuses_an_invalid_flag_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout route` under a broken flag file fails (exit 2) with the field and line."""
    flags = tmp_path / "flags.yaml"
    flags.write_text("revision: r1\nuse_new_storage: maybe\n")
    assert main(["route", "k", "--flags", str(flags)]) == 2
    assert "flags.yaml:2: use_new_storage: must be true or false" in capsys.readouterr().err


def test_router_benchmark_runs(tmp_path: Path) -> None:
    """bench/router.py runs every case briefly and records a ratio to its dict-lookup baseline."""
    import subprocess
    import sys

    out = tmp_path / "router.json"
    root = ROOT
    finished = subprocess.run(
        [sys.executable, str(root / "bench" / "router.py"), "--seconds", "0.01", "--rounds", "1", "--json", str(out)],
        cwd=root, capture_output=True, text=True, timeout=60, check=False)
    assert finished.returncode == 0, finished.stderr
    figures = json.loads(out.read_text())["figures"]
    assert figures[0]["case"] == "dict lookup (baseline)"
    assert all(f["ratio"] > 0 for f in figures[1:])
