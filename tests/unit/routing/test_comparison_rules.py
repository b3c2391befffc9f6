"""The flag file's comparison_rules: field paths, expiry dates, the rule's own checks, and the lines
that the file's messages name (the schema agreement lives in test_flags.py with the other fields)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from proxy.errors import ConfigError
from proxy.routing.comparisonrules import EVERY, ComparisonRule, parse_expiry, parse_field_path
from proxy.routing.flagfile import parse_flags
from tests.support.paths import ROOT


@pytest.mark.parametrize(("path", "segments"), [
    ("$.updated_at", ("updated_at",)),
    ("$.meta.etag", ("meta", "etag")),
    ('$["odd key"].x', ("odd key", "x")),
    ('$["quote \\" and \\u00e9"]', ('quote " and \u00e9',)),
    ("$.items[0]", ("items", 0)),
    ("$.items[*].seen", ("items", EVERY, "seen")),
    ("$[12][*]", (12, EVERY)),
])
def test_field_paths_are_written_as_discrepancy_records_show_them(path: str, segments: tuple[object, ...]) -> None:
    assert parse_field_path(path) == segments


@pytest.mark.parametrize(("path", "says"), [
    ("updated_at", "must be a path from the document's root"),
    ("/updated_at", "must be a path from the document's root"),  # JSON Pointer is not the notation
    ("$", "is the whole document"),
    ("$.", "after '.' comes a member name"),
    ("$.9lives", "after '.' comes a member name"),
    ("$[01]", "unexpected"),
    ("$[-1]", "unexpected"),
    ('$["open', "must hold a JSON string"),
    ('$["a"', "must hold a JSON string and end in ]"),
    ("$.a b", "unexpected ' b'"),
])
def test_bad_field_paths_say_why(path: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_field_path(path)


def test_expiry_is_an_iso_date() -> None:
    assert parse_expiry("2026-12-31", "expires") == dt.date(2026, 12, 31)
    for bad in ("2026-13-01", "2026-02-30", "31.12.2026", "2026-1-1", "2026-12-31T00:00:00Z", 20261231, None):
        with pytest.raises(ConfigError, match="expires: must be a date such as 2026-12-31"):
            parse_expiry(bad, "expires")


def test_a_rule_built_in_code_is_held_to_the_same_checks() -> None:
    base: dict[str, Any] = {"keys": "^a:", "owner": "me", "expires": dt.date(2030, 1, 1)}
    assert ComparisonRule(**base, numeric_tolerance=1).numeric_tolerance == 1.0
    for extra, says in (({"owner": ""}, "owner: is required"), ({}, "ignore_fields: a rule needs"),
                        ({"numeric_tolerance": float("nan")}, "numeric_tolerance: must be a number"),
                        ({"numeric_tolerance": True}, "numeric_tolerance: must be a number"),
                        ({"ignore_fields": ("$.ok", "nope")}, "ignore_fields[1]: must be a path")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            ComparisonRule(**{**base, **extra})


def test_messages_name_the_file_line_and_field() -> None:
    text = ("revision: r\ncomparison_rules:\n  - keys: '^a:'\n    owner: me\n    expires: 2030-01-01\n"
            "    ignore_fields: [$.a]\n  - keys: '^b:'\n    owner: you\n    numeric_tolerance: 0.5\n")
    with pytest.raises(ConfigError) as err:
        parse_flags(text, "flags.yaml")
    assert str(err.value).startswith("flags.yaml:7: comparison_rules[1].expires: is required")
    bad_tolerance = text.replace("numeric_tolerance: 0.5", "expires: 2030-01-01\n    numeric_tolerance: 2e12")
    with pytest.raises(ConfigError) as err:
        parse_flags(bad_tolerance, "flags.yaml")
    assert str(err.value).startswith("flags.yaml:10: comparison_rules[1].numeric_tolerance: must be a number from 0")


def test_an_expired_rule_keeps_the_file_valid() -> None:
    """Refusing the file would keep the previous flags, expired rule and all: it loads, and says expired."""
    flags = parse_flags("comparison_rules:\n  - {keys: x, owner: me, expires: 2001-01-01, ignore_fields: [$.t]}\n")
    (rule,) = flags.comparison_rules
    assert rule.expired(dt.datetime(2001, 1, 2, tzinfo=dt.UTC).timestamp())
    assert not rule.expired(dt.datetime(2001, 1, 1, 23, 59, tzinfo=dt.UTC).timestamp())


def test_the_shipped_example_uncommented_is_a_valid_rule() -> None:
    """config/flags.yaml ships the block commented out; taken as it stands, it is the documented rule."""
    lines = (ROOT / "config" / "flags.yaml").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("# comparison_rules:")))
    block = []
    for line in lines[start:]:
        if not (line.startswith("# comparison_rules:") or line.startswith("#  ")):
            break
        block.append(line.removeprefix("# "))
    (rule,) = parse_flags("\n".join(block) + "\n").comparison_rules
    assert rule == ComparisonRule(keys="^session:", owner="payments-team", expires=dt.date(2026, 12, 31),
                                  ignore_fields=("$.updated_at", "$.meta.etag"), numeric_tolerance=0.001,
                                  reason="clock skew between the stores")
