"""The flag file (contract §3) is validated whole; errors name the file, the line and the field."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import re2
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cli import main
from proxy.errors import ConfigError
from proxy.routing.comparisonrules import RULE_FIELDS, ComparisonRule
from proxy.routing.flagfile import load_flags, parse_flags, read_document
from proxy.routing.flags import Flags, check_key_pattern, compile_key_patterns
from proxy.routing.safetyflags import CanaryPlan, Triggers
from tests.support.paths import ROOT

SCHEMA = json.loads((ROOT / "config" / "flags.schema.json").read_text())

VALID = [
    "",
    "{}",
    "revision: '2026-11-23.1'\nuse_new_storage: true\nshadow_mode_enabled: true\n",
    "traffic_percentage: {read: 10, write: 12.5}\n",
    "traffic_percentage: {read: 0, write: 100}\n",
    "enabled_for_keys: ['^session:', 'cart:[0-9]+$']\ndisabled_for_keys: ['^billing:']\n",
    "enabled_for_users: [checkout, search]\nread_only: true\nbucket_salt: 'v2'\n",
    "enabled_for_keys:\n",
    "revision: 7\n",
    "revision: 2026-11-23\n",
    "use_new_storage: True\nread_only: FALSE\n",
    "traffic_percentage: {read: 1e1, write: 99.99}\n",
    "enabled_for_users: []\ndisabled_for_keys: ['(?i)^billing:', '(a)\\\\1']\n",
    "null\n",
    "traffic_percentage: {read: 010, write: 0o10}\n",
    "traffic_percentage: {read: 0x1F, write: +5}\n",
    "bucket_salt: 1_0\nrevision: 1:30\n",
    "enabled_for_users: [0b11, 1_000]\n",
    "rollback_triggers: {error_rate: 0.01, latency_increase: 0.20, discrepancy_rate: 0.0001, window: 60s, "
    "min_calls: 100}\ncanary: {steps: [1, 10, 50, 100], interval: 10m}\n",
    "rollback_triggers: {}\ncanary: {steps: [100]}\n",
    "rollback_triggers: {error_rate: 0, latency_increase: 1000, discrepancy_rate: 1, window: 90, min_calls: 1}\n",
    "rollback_triggers: {window: ' 1.5 s '}\ncanary: {steps: [0.5, 99.5], interval: 24h}\n",
    "canary: {steps: [1], interval: 86400}\nrollback_triggers: {window: 1}\n",
    "comparison_rules:\n  - keys: '^session:'\n    ignore_fields: [$.updated_at, '$.meta[\"e tag\"]', '$.items[*].seen']\n"
    "    numeric_tolerance: 0.001\n    owner: payments-team\n    expires: 2026-12-31\n    reason: clock skew\n",
    "comparison_rules:\n  - {keys: '', owner: me, expires: 2000-01-01, numeric_tolerance: 1}\n",  # expired: still valid
    "comparison_rules: []\n",
]

# Patterns that only a backtracking engine runs: RE2 refuses them, so no pattern can take longer than
# a scan of the key.
BACKREFERENCE = "enabled_for_keys:\n  - '(a)\\1'\n"
LOOKAHEAD = "disabled_for_keys: ['^(?=b)']\n"

INVALID = [
    ("surprise: 1\n", 1, "surprise: unknown field"),
    ("use_new_storage: true\ntraffic_percentage:\n  read: 150\n", 3, "traffic_percentage.read: must be a number from 0 to 100"),
    ("traffic_percentage: {write: -1}\n", 1, "traffic_percentage.write: must be a number from 0 to 100"),
    ("traffic_percentage: {read: true}\n", 1, "traffic_percentage.read: must be a number"),
    ("traffic_percentage: {read: '10'}\n", 1, "traffic_percentage.read: must be a number"),
    ("traffic_percentage: {reads: 10}\n", 1, "traffic_percentage.reads: unknown field"),
    ("traffic_percentage: 10\n", 1, "traffic_percentage: must be a mapping"),
    ("use_new_storage: 'yes please'\n", 1, "use_new_storage: must be true or false"),
    ("read_only: 1\n", 1, "read_only: must be true or false"),
    ("shadow_mode_enabled: null\n", 1, "shadow_mode_enabled: must be true or false"),
    ("enabled_for_keys: '^x'\n", 1, "enabled_for_keys: must be a list"),
    ("revision: r\n\ndisabled_for_keys: ['(unclosed']\n", 3, "disabled_for_keys[0]: regular expression does not compile"),
    ("enabled_for_keys: [3]\n", 1, "enabled_for_keys[0]: must be a regular expression string"),
    ("enabled_for_users: [checkout, {a: 1}]\n", 1, "enabled_for_users[1]: must be a string"),
    ("bucket_salt: 5\n", 1, "bucket_salt: must be a string"),
    ("- a\n- b\n", 1, "flags: must be a mapping"),
    ("use_new_storage: yes\n", 1, "use_new_storage: must be true or false, got 'yes'"),
    ("read_only: off\n", 1, "read_only: must be true or false, got 'off'"),
    ("traffic_percentage: {read: .nan}\n", 1, "traffic_percentage.read: must be a number from 0 to 100, got .nan"),
    ("traffic_percentage: {read: .inf}\n", 1, "traffic_percentage.read: must be a number from 0 to 100, got .inf"),
    ("traffic_percentage: {write: null}\n", 1, "traffic_percentage.write: must be a number from 0 to 100, got null"),
    ("traffic_percentage: {read: 100.5}\n", 1, "traffic_percentage.read: must be a number from 0 to 100, got 100.5"),
    ("traffic_percentage:\n", 1, "traffic_percentage: must be a mapping, got null"),
    ("revision: true\n", 1, "revision: must be a string, got true"),
    ("revision: [a]\n", 1, "revision: must be a string, got a list"),
    ("enabled_for_users: checkout\n", 1, "enabled_for_users: must be a list, got 'checkout'"),
    ("enabled_for_users: [7]\n", 1, "enabled_for_users[0]: must be a string, got 7"),
    ("enabled_for_keys: ['ok', '*bad']\n", 1, "enabled_for_keys[1]: regular expression does not compile"),
    ("bucket_salt: null\n", 1, "bucket_salt: must be a string, got null"),
    ("read_only: false\n1: x\n", 2, "flags: field names must be strings, got 1"),
    ("traffic_percentage: {read: 1_0}\n", 1, "traffic_percentage.read: must be a number from 0 to 100, got '1_0'"),
    ("traffic_percentage: {read: '1:30'}\n", 1, "traffic_percentage.read: must be a number"),
    ("traffic_percentage: {write: 1:30}\n", 1, "traffic_percentage.write: must be a number from 0 to 100, got '1:30'"),
    ("traffic_percentage: {write: 0b11}\n", 1, "traffic_percentage.write: must be a number from 0 to 100, got '0b11'"),
    ("bucket_salt: 0x1F\n", 1, "bucket_salt: must be a string, got 0x1F"),
    ("enabled_for_users: [010]\n", 1, "enabled_for_users[0]: must be a string, got 010"),
    (BACKREFERENCE, 2, "enabled_for_keys[0]: regular expression does not compile (RE2 syntax"),
    (LOOKAHEAD, 1, "disabled_for_keys[0]: regular expression does not compile (RE2 syntax"),
    ("rollback_triggers: {error_rate: 2}\n", 1, "rollback_triggers.error_rate: must be a share from 0 to 1, got 2"),
    ("rollback_triggers:\n  latency_increase: -1\n", 2, "rollback_triggers.latency_increase: must be a share"),
    ("rollback_triggers: {discrepancy_rate: '0.1'}\n", 1, "rollback_triggers.discrepancy_rate: must be a number"),
    ("rollback_triggers: {window: 0}\n", 1, "rollback_triggers.window: must be from 1s to 24h"),
    ("rollback_triggers: {window: soon}\n", 1, "rollback_triggers.window: must be a duration"),
    ("rollback_triggers: {window: [60]}\n", 1, "rollback_triggers.window: must be a duration"),
    ("rollback_triggers: {min_calls: 0}\n", 1, "rollback_triggers.min_calls: must be a whole number of 1 or more"),
    ("rollback_triggers: {min_calls: true}\n", 1, "rollback_triggers.min_calls: must be a whole number, got true"),
    ("rollback_triggers: {min_calls: 1.5}\n", 1, "rollback_triggers.min_calls: must be a whole number, got 1.5"),
    ("rollback_triggers: {timeout: 1}\n", 1, "rollback_triggers.timeout: unknown field"),
    ("rollback_triggers: 0.01\n", 1, "rollback_triggers: must be a mapping"),
    ("canary: {interval: 10m}\n", 1, "canary.steps: is required"),
    ("canary: {steps: []}\n", 1, "canary.steps: must list at least one percentage"),
    ("canary: {steps: 10}\n", 1, "canary.steps: must be a list"),
    ("canary: {steps: [0, 10]}\n", 1, "canary.steps[0]: must be a percentage above 0 and at most 100, got 0"),
    ("canary: {steps: [10, 101]}\n", 1, "canary.steps[1]: must be a percentage above 0 and at most 100, got 101"),
    ("canary: {steps: ['10']}\n", 1, "canary.steps[0]: must be a percentage above 0 and at most 100, got '10'"),
    ("canary: {steps: [1], interval: -5}\n", 1, "canary.interval: must be from 1s to 24h"),
    ("canary: {steps: [1], interval: 10 minutes}\n", 1, "canary.interval: must be a duration"),
    ("canary: {steps: [1], pause: 1}\n", 1, "canary.pause: unknown field"),
    ("comparison_rules:\n  - keys: a\n    ignore_fields: [$.a]\n    expires: 2026-12-31\n", 2,
     "comparison_rules[0].owner: is required"),
    ("comparison_rules:\n  - keys: a\n    ignore_fields: [$.a]\n    owner: me\n", 2,
     "comparison_rules[0].expires: is required"),
    ("comparison_rules:\n  - {ignore_fields: [$.a], owner: me, expires: 2026-12-31}\n", 2,
     "comparison_rules[0].keys: is required"),
    ("comparison_rules:\n  - {keys: a, owner: me, expires: 2026-12-31}\n", 2,
     "comparison_rules[0].ignore_fields: a rule needs ignore_fields or a numeric_tolerance"),
    ("comparison_rules:\n  - {keys: a, owner: me, expires: 31.12.2026, numeric_tolerance: 1}\n", 2,
     "comparison_rules[0].expires: must be a date such as 2026-12-31, got '31.12.2026'"),
    ("comparison_rules:\n  - keys: a\n    owner: me\n    expires: 2026-12-31\n    ignore_fields:\n      - $.a\n"
     "      - $\n", 7, "comparison_rules[0].ignore_fields[1]: '$' is the whole document"),
    ("comparison_rules:\n  - {keys: a, owner: me, expires: 2026-12-31, ignore_fields: [updated_at]}\n", 2,
     "comparison_rules[0].ignore_fields[0]: must be a path from the document's root"),
    ("comparison_rules:\n  - {keys: a, owner: me, expires: 2026-12-31, numeric_tolerance: -1}\n", 2,
     "comparison_rules[0].numeric_tolerance: must be a number from 0"),
    ("comparison_rules:\n  - {keys: a, owner: me, expires: 2026-12-31, numeric_tolerance: '1'}\n", 2,
     "comparison_rules[0].numeric_tolerance: must be a number, got '1'"),
    ("comparison_rules:\n  - {keys: '(a', owner: me, expires: 2026-12-31, numeric_tolerance: 1}\n", 2,
     "comparison_rules[0].keys: regular expression does not compile"),
    ("comparison_rules:\n  - {keys: a, owner: '  ', expires: 2026-12-31, numeric_tolerance: 1}\n", 2,
     "comparison_rules[0].owner: is required"),
    ("comparison_rules:\n  - {keys: a, owner: me, expires: 2026-12-31, numeric_tolerance: 1, until: x}\n", 2,
     "comparison_rules[0].until: unknown field"),
    ("comparison_rules: {keys: a}\n", 1, "comparison_rules: must be a list"),
]

# Cases that the JSON Schema cannot express, so it accepts them: its `type: integer` takes 100.0 (JSON
# knows no difference between the two), it orders nothing in a list, and a duration written as a string
# is only matched against its pattern, not converted to seconds.
SCHEMA_CANNOT_SAY = [
    ("rollback_triggers: {min_calls: 100.0}\n", 1, "rollback_triggers.min_calls: must be a whole number, got 100.0"),
    ("canary: {steps: [1, 50, 10]}\n", 1, "canary.steps[2]: must be above the step before it (50), got 10"),
    ("canary: {steps: [10, 10]}\n", 1, "canary.steps[1]: must be above the step before it (10), got 10"),
    ("rollback_triggers: {window: 500ms}\n", 1, "rollback_triggers.window: must be from 1s to 24h, got 0.5s"),
    ("canary: {steps: [1], interval: 25h}\n", 1, "canary.interval: must be from 1s to 24h, got 90000.0s"),
    ("rollback_triggers: {error_rate: .nan}\n", 1, "rollback_triggers.error_rate: must be a share from 0 to 1, got nan"),
    # The schema's `format: date` is checked (2026-02-30 is refused by both); a path's `[*]` after a
    # member is no list there, which only the documents can tell, so both accept it.
    ("comparison_rules:\n  - {keys: a, owner: me, expires: 2026-12-31, numeric_tolerance: .nan}\n", 2,
     "comparison_rules[0].numeric_tolerance: must be a number from 0"),
]
INVALID += SCHEMA_CANNOT_SAY

# Cases the JSON Schema cannot see (it gets the file after loading) or judges differently by design.
CODE_ONLY = {
    "traffic_percentage: {read: .nan}\n",  # JSON Schema's range checks let NaN through
    BACKREFERENCE, LOOKAHEAD,  # `format: regex` is the checker's own engine, not RE2
    *(case[0] for case in SCHEMA_CANNOT_SAY),
}


def test_empty_file_means_the_defaults_everything_to_old() -> None:
    """An empty or absent set of fields gives the defaults: new unused, nothing compared."""
    assert parse_flags("") == Flags()
    assert Flags() == Flags(use_new_storage=False, shadow_mode_enabled=False, read_percentage=0.0,
                            write_percentage=0.0, read_only=False)


def test_every_field_is_read() -> None:
    """Each field of the contract lands in the Flags value."""
    flags = parse_flags(
        "revision: '2026-11-23.1'\nuse_new_storage: true\nshadow_mode_enabled: true\n"
        "traffic_percentage: {read: 10, write: 12.5}\nenabled_for_keys: ['^session:']\n"
        "disabled_for_keys: ['^billing:']\nenabled_for_users: [checkout]\nread_only: true\nbucket_salt: s\n"
    )
    assert flags == Flags(revision="2026-11-23.1", use_new_storage=True, shadow_mode_enabled=True,
                          read_percentage=10.0, write_percentage=12.5, enabled_for_keys=("^session:",),
                          disabled_for_keys=("^billing:",), enabled_for_users=("checkout",), read_only=True,
                          bucket_salt="s")


@pytest.mark.parametrize(("text", "line", "message"), INVALID)
def test_invalid_flags_are_refused_naming_line_and_field(text: str, line: int, message: str) -> None:
    """Each kind of mistake is refused with the file, the line and the field in the message."""
    with pytest.raises(ConfigError) as err:
        parse_flags(text, "flags.yaml")
    assert str(err.value).startswith(f"flags.yaml:{line}: ")
    assert message in str(err.value)


@pytest.mark.parametrize("text", ["a: [\n", "use_new_storage: true\n  bad indent: 1\n", "\tx: 1\n"])
def test_broken_yaml_names_the_line(text: str) -> None:
    """A file that is not YAML at all is refused with the line where parsing stopped."""
    with pytest.raises(ConfigError, match=r"^flags\.yaml:\d+: not valid YAML"):
        parse_flags(text, "flags.yaml")


def test_a_field_given_twice_is_refused() -> None:
    """A duplicated field is an error, not a silent last-one-wins."""
    with pytest.raises(ConfigError, match=r"flags\.yaml:2: read_only: appears twice"):
        parse_flags("read_only: true\nread_only: false\n", "flags.yaml")


def test_invalid_utf8_is_refused() -> None:
    """A flag file that is not UTF-8 is refused with a clear message."""
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_flags(b"revision: '\xff'\n", "flags.yaml")


def _schema_accepts(text: str) -> bool:
    try:
        jsonschema.validate(read_document(text), SCHEMA, format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError:
        return False
    return True


def _code_accepts(text: str) -> bool:
    try:
        parse_flags(text)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("text", VALID + [case[0] for case in INVALID if case[0] not in CODE_ONLY])
def test_schema_and_code_agree(text: str) -> None:
    """The JSON Schema that editors use accepts exactly what the proxy accepts."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert _schema_accepts(text) == _code_accepts(text)


def test_schema_and_code_know_the_same_fields() -> None:
    """Every field the code reads is in the schema and no other, down to traffic_percentage's two."""
    # The optional sections appear in the document only when set, so the value shown sets them.
    rule = ComparisonRule(keys="^session:", owner="me", expires=dt.date(2026, 12, 31), ignore_fields=("$.a",),
                          numeric_tolerance=0.5, reason="why")
    document = Flags(rollback_triggers=Triggers(error_rate=0.01, latency_increase=0.2, discrepancy_rate=0.0001),
                     canary=CanaryPlan(steps=(1, 100)), comparison_rules=(rule,)).to_document()
    assert set(SCHEMA["properties"]) == set(document)
    rule_schema = SCHEMA["properties"]["comparison_rules"]["items"]
    assert set(rule_schema["properties"]) == set(document["comparison_rules"][0]) == RULE_FIELDS
    assert rule_schema["additionalProperties"] is False
    assert rule_schema["required"] == ["keys", "owner", "expires"]
    for section in ("traffic_percentage", "rollback_triggers", "canary"):
        assert set(SCHEMA["properties"][section]["properties"]) == set(document[section]), section
        assert SCHEMA["properties"][section]["additionalProperties"] is False, section
    assert SCHEMA["additionalProperties"] is False
    assert SCHEMA["properties"]["canary"]["required"] == ["steps"]
    assert _code_accepts("canary: {interval: 10m}\n") == _schema_accepts("canary: {interval: 10m}\n") is False
    for name in document:
        assert _code_accepts(f"{name}: {json.dumps(document[name])}\n")  # the defaults, written out
        assert _schema_accepts(f"{name}: {json.dumps(document[name])}\n")


def test_shipped_flag_file_is_valid_and_sends_everything_to_old() -> None:
    """config/flags.yaml validates, names its schema for editors, and keeps new unused."""
    text = (ROOT / "config" / "flags.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=flags.schema.json")
    flags = parse_flags(text)
    assert not flags.use_new_storage
    assert _schema_accepts(text)


def test_check_flags_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout check-flags` exits 0 for a valid file and 1 with the error for an invalid one."""
    good = tmp_path / "good.yaml"
    good.write_text("revision: r9\n")
    assert main(["check-flags", str(good)]) == 0
    assert "valid (revision 'r9')" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("revision: r9\ntraffic_percentage: {read: 101}\n")
    assert main(["check-flags", str(bad)]) == 1
    assert "bad.yaml:2: traffic_percentage.read" in capsys.readouterr().err
    assert main(["check-flags", str(bad), "--json"]) == 1
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert result["valid"] is False
    assert "traffic_percentage.read" in result["error"]


def test_the_contract_example_message() -> None:
    """An out-of-range percentage is reported exactly as `file:line: field: rule, got value`."""
    text = "revision: r\nuse_new_storage: true\n\n\n\ntraffic_percentage:\n  read: 150\n"
    with pytest.raises(ConfigError) as err:
        parse_flags(text, "flags.yaml")
    assert str(err.value) == "flags.yaml:7: traffic_percentage.read: must be a number from 0 to 100, got 150"


def test_scalars_are_read_as_yaml_1_2() -> None:
    """Dates stay strings, numbers keep their spelling as a revision, and 1e1 is a number."""
    assert parse_flags("revision: 2026-11-23\n").revision == "2026-11-23"
    assert parse_flags("revision: 2026.10\n").revision == "2026.10"
    assert parse_flags("traffic_percentage: {read: 1e1, write: 7}\n").read_percentage == 10.0
    assert parse_flags("traffic_percentage: {read: 1e1, write: 7}\n").write_percentage == 7.0


def test_integers_are_read_as_yaml_1_2_core() -> None:
    """Numbers mean what an editor's YAML 1.2 parser says: 010 is ten (not octal eight), 0o10 is eight,
    and YAML 1.1 spellings (1_0, 1:30, 0b11) are strings, so the schema and the proxy agree on them."""
    flags = parse_flags("traffic_percentage: {read: 010, write: 0o10}\n")
    assert (flags.read_percentage, flags.write_percentage) == (10.0, 8.0)
    assert parse_flags("traffic_percentage: {read: 0x1F, write: -0}\n").read_percentage == 31.0
    assert parse_flags("bucket_salt: 1_0\n").bucket_salt == "1_0"
    assert parse_flags("enabled_for_users: [1:30, 0b11]\n").enabled_for_users == ("1:30", "0b11")
    assert parse_flags("revision: 010\n").revision == "010"
    assert read_document("a: [1e2, .5, -.inf, .NaN, 5.]\n")["a"][:3] == [100.0, 0.5, float("-inf")]


def test_key_regexes_are_compiled_with_the_flags() -> None:
    """Flags carries one search per regex list, with re.search semantics (a match anywhere)."""
    flags = parse_flags("enabled_for_keys: ['^session:', 'cart$']\n")
    assert flags.enabled_keys_search is not None
    assert flags.enabled_keys_search("session:1")
    assert flags.enabled_keys_search("my:cart")
    assert not flags.enabled_keys_search("my:session:1")
    assert flags.disabled_keys_search is None


def test_backtracking_pattern_is_matched_in_linear_time() -> None:
    """(a+)+$ against 'a'*1000+'!' (2**1000 steps for a backtracking engine) answers at once."""
    flags = Flags(enabled_for_keys=("(a+)+$",), disabled_for_keys=("^x", "(a|aa)+$"))
    assert flags.enabled_keys_search is not None
    assert flags.disabled_keys_search is not None
    started = time.monotonic()
    assert not flags.enabled_keys_search("a" * 1000 + "!")
    assert not flags.disabled_keys_search("a" * 1000 + "!")
    assert time.monotonic() - started < 1.0
    assert flags.enabled_keys_search("a" * 1000)


@pytest.mark.parametrize(("pattern", "why"), [
    ("(x)\\1$", "invalid escape sequence"),  # a backreference
    ("^(?=session:)", "invalid perl operator"),  # lookahead
    ("(?<!a)b", "invalid perl operator"),  # lookbehind
    ("a{1001}", "invalid repetition size"),  # RE2 bounds a repetition: compiling stays cheap
])
def test_patterns_re2_cannot_run_are_refused_naming_field_and_line(pattern: str, why: str) -> None:
    """A pattern only a backtracking engine runs is refused by the file's validation and by Flags."""
    text = f"revision: r\nenabled_for_keys:\n  - '^ok'\n  - '{pattern}'\n"
    with pytest.raises(ConfigError, match=rf"^flags.yaml:4: enabled_for_keys\[1\]: regular expression does not "
                                          rf"compile \(RE2 syntax.*\): {why}"):
        parse_flags(text)
    with pytest.raises(ConfigError, match=rf"disabled_for_keys\[0\]: .*{why}"):
        Flags(disabled_for_keys=(pattern,))


def test_combined_patterns_keep_their_own_inline_flags() -> None:
    """(?i) in one pattern of a list applies to that pattern only."""
    flags = Flags(enabled_for_keys=("(?i)^session:", "^cart:[0-9]+"))
    assert flags.enabled_keys_search is not None
    assert flags.enabled_keys_search("SESSION:1")
    assert flags.enabled_keys_search("cart:1")
    assert not flags.enabled_keys_search("CART:1")


def test_non_ascii_keys_and_patterns_match() -> None:
    """Patterns and keys are matched as text: a non-ASCII literal and a dot over a non-ASCII letter."""
    flags = Flags(enabled_for_keys=("^café:", "^n.d$"))
    assert flags.enabled_keys_search is not None
    assert flags.enabled_keys_search("café:1")
    assert flags.enabled_keys_search("nöd")
    assert not flags.enabled_keys_search("cafe:1")


def test_long_pattern_list_matches_in_every_piece() -> None:
    """A list longer than one RE2 program holds still matches a key by any of its patterns, first or last."""
    patterns = (*(f"^t{i:04}:[0-9]+$" for i in range(2500)), "draft")
    search = compile_key_patterns(patterns, "enabled_for_keys")
    assert search is not None
    assert search("t0000:1")
    assert search("t2499:12")
    assert search("x:draft:1")
    assert not search("t2500:1")
    assert not search("t0001:x")


_PIECES = ["^", "$", "a", "b", ":", "ab", "a+", "b*", "a?", "b{0,2}", "[ab]", ".", "(?i)A", "\\$", "\\.", "é", "|",
           "(a|b)", "*", "?"]


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=4).map("".join),
                         min_size=1, max_size=5),
       keys=st.lists(st.text(alphabet="abAB:$.é\n", max_size=6), max_size=20))
def test_one_search_per_list_means_each_pattern_searched_alone(patterns: list[str], keys: list[str]) -> None:
    """The list's single search (literal shortcuts, one combined program) matches a key exactly when
    one of its patterns, searched alone with RE2, does."""
    valid = [p for p in patterns if _compiles(p)]
    if not valid:
        return
    search = compile_key_patterns(tuple(valid), "enabled_for_keys")
    assert search is not None
    for key in keys:
        assert bool(search(key)) == any(re2.search(p, key) is not None for p in valid), (valid, key)


def _compiles(pattern: str) -> bool:
    try:
        check_key_pattern(pattern)
    except ValueError:
        return False
    return True


def test_flags_built_in_code_are_checked_too() -> None:
    """A Flags value made in code refuses a bad regex or percentage, naming the field."""
    with pytest.raises(ConfigError, match=r"disabled_for_keys\[1\]: regular expression does not compile"):
        Flags(disabled_for_keys=("ok", "(")
              )
    with pytest.raises(ConfigError, match=r"traffic_percentage.write: must be a number from 0 to 100"):
        Flags(write_percentage=101)


def test_to_document_round_trips() -> None:
    """The file-shaped document of a Flags value parses back to the same value."""
    flags = Flags(revision="r", use_new_storage=True, read_percentage=12.5, write_percentage=3,
                  enabled_for_keys=("^a",), disabled_for_keys=("b",), enabled_for_users=("u",), bucket_salt="s")
    assert parse_flags(yaml.safe_dump(flags.to_document())) == flags


def test_load_flags_gives_the_digest_of_the_bytes(tmp_path: Path) -> None:
    """load_flags returns the flags and the SHA-256 of the file, which tells a real change from a touch."""
    path = tmp_path / "flags.yaml"
    path.write_bytes(b"revision: r1\n")
    loaded = load_flags(path)
    assert loaded.flags.revision == "r1"
    assert loaded.digest == hashlib.sha256(b"revision: r1\n").hexdigest()
    with pytest.raises(ConfigError, match="cannot read flag file"):
        load_flags(tmp_path / "missing.yaml")


def test_check_flags_json_for_a_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check-flags --json` reports valid, the revision and the flags in the file's shape."""
    good = tmp_path / "good.yaml"
    good.write_text("revision: r9\ntraffic_percentage: {read: 10}\n")
    assert main(["check-flags", str(good), "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert (result["valid"], result["revision"]) == (True, "r9")
    assert result["flags"]["traffic_percentage"] == {"read": 10.0, "write": 0.0}


def test_shipped_flag_file_comments_every_field() -> None:
    """Every field of the shipped file carries a comment, and every contract field is in it."""
    lines = (ROOT / "config" / "flags.yaml").read_text().splitlines()
    # rollback_triggers and canary are shipped commented out (`# canary:`): off, but shown and explained.
    fields = [line.removeprefix("# ") for line in lines
              if line and (not line.startswith("#") or re.match(r"# +[a-z_]+:", line))]
    assert all("#" in line for line in fields)
    assert set(SCHEMA["properties"]) <= {line.split(":")[0].strip() for line in fields}
