"""The router follows contract §3's precedence and bucket formula exactly, for every input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cli import main
from proxy.flags import Flags
from proxy.router import Op, Override, Reason, Route, Router, bucket

READS = (Op.GET, Op.HAS, Op.KEYS)
WRITES = (Op.SET, Op.DELETE)
ON = Flags(use_new_storage=True)


def reference_bucket(key: str, salt: str) -> int:
    """The contract's formula, written out independently of the code under test."""
    digest = hashlib.sha256((salt + ":" + key).encode("utf-8")).digest()
    return sum(byte << (8 * (7 - i)) for i, byte in enumerate(digest[:8])) % 10000


def test_bucket_known_values() -> None:
    """bucket() gives the values computed by hand from the formula, so a change of formula fails."""
    assert bucket("user:1", "") == 5061
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
    """Over 20,000 keys the share routed to new is within one point of the percentage."""
    router = Router(Flags(use_new_storage=True, write_percentage=percentage, bucket_salt=salt))
    share = sum(router.route(Op.SET, f"user:{i}").primary == Route.NEW for i in range(20_000)) / 200
    assert abs(share - percentage) < 1.0


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
