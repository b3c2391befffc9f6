"""The flag file's safety sections (contract §3): `rollback_triggers` and `canary`.

Each bad value is refused naming the file, the line and the field; a file whose canary is invalid
never replaces good flags; the canary's step, once applied, sets the router's percentages for every
flag file that comes, and the file's own traffic_percentage stays what the file says.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import ConfigError
from proxy.routing.flagfile import parse_flags
from proxy.routing.flags import Flags
from proxy.routing.router import Op, Reason, Route
from proxy.routing.safetyflags import (
    DEFAULT_CANARY_INTERVAL_S,
    DEFAULT_MIN_CALLS,
    DEFAULT_WINDOW_S,
    CanaryPlan,
    Triggers,
    format_duration,
    parse_duration,
)
from proxy.routing.watcher import FlagWatcher
from tests.support.paths import ROOT

# The contract's example section, as written there (comments included).
CONTRACT_EXAMPLE = """\
rollback_triggers:            # crossing any one sends everything to old, automatically
  error_rate: 0.01            # share of new's calls that failed in the window
  latency_increase: 0.20      # new's p99 above old's p99 by more than this share, same ops
  discrepancy_rate: 0.0001    # discrepancies over compared operations in the window
  window: 60s
  min_calls: 100              # fewer calls of new in the window: inconclusive, never a pass
canary:
  steps: [1, 10, 50, 100]     # read and write percentage, walked up in order
  interval: 10m               # how long a step must stay healthy before the next
"""

CONTRACT_TRIGGERS = Triggers(error_rate=0.01, latency_increase=0.20, discrepancy_rate=0.0001, window_s=60.0,
                             min_calls=100)
CONTRACT_CANARY = CanaryPlan(steps=(1.0, 10.0, 50.0, 100.0), interval_s=600.0)


def test_the_contract_example_parses_to_its_values() -> None:
    """The contract's example gives each threshold, the window in seconds, and the steps in order."""
    flags = parse_flags(CONTRACT_EXAMPLE)
    assert flags.rollback_triggers == CONTRACT_TRIGGERS
    assert flags.rollback_triggers.armed == ("error_rate", "latency_increase", "discrepancy_rate")
    assert flags.canary == CONTRACT_CANARY
    assert flags == Flags(rollback_triggers=CONTRACT_TRIGGERS, canary=CONTRACT_CANARY)


def test_a_file_without_the_sections_has_neither() -> None:
    """No rollback_triggers and no canary: no automatic rollback, and the percentages are the file's."""
    flags = parse_flags("revision: r\ntraffic_percentage: {read: 5, write: 5}\n")
    assert (flags.rollback_triggers, flags.canary) == (None, None)
    assert {"rollback_triggers", "canary"}.isdisjoint(flags.to_document())


def test_defaults_of_a_section_that_names_little() -> None:
    """An empty trigger section arms nothing and keeps the plan's window and minimum; a canary without
    interval holds each step 10 minutes."""
    flags = parse_flags("rollback_triggers: {}\ncanary: {steps: [100]}\n")
    assert flags.rollback_triggers == Triggers()
    assert flags.rollback_triggers.armed == ()
    assert (flags.rollback_triggers.window_s, flags.rollback_triggers.min_calls) == (DEFAULT_WINDOW_S, DEFAULT_MIN_CALLS)
    assert flags.canary == CanaryPlan(steps=(100.0,), interval_s=DEFAULT_CANARY_INTERVAL_S)
    assert (DEFAULT_WINDOW_S, DEFAULT_MIN_CALLS, DEFAULT_CANARY_INTERVAL_S) == (60.0, 100, 600.0)


def test_the_shipped_file_carries_both_sections_commented_out() -> None:
    """config/flags.yaml ships them off (everything stays on old); uncommented, they are the contract's."""
    text = (ROOT / "config" / "flags.yaml").read_text()
    shipped = parse_flags(text)
    assert (shipped.rollback_triggers, shipped.canary) == (None, None)
    assert (shipped.use_new_storage, shipped.read_percentage, shipped.write_percentage) == (False, 0.0, 0.0)
    lines = text.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("# rollback_triggers:")))
    uncommented = [line.removeprefix("# ") for line in lines[start:]]
    armed = parse_flags("\n".join(lines[:start] + uncommented) + "\n")
    assert armed == Flags(revision=shipped.revision, rollback_triggers=CONTRACT_TRIGGERS, canary=CONTRACT_CANARY)


TRIGGERS_AT_LINE_3 = "revision: r\nrollback_triggers:\n  {}\n"
CANARY_AT_LINE_3 = "revision: r\ncanary:\n  {}\n"

# (the section's body, the field, what the message says after it); the body sits on line 3.
REFUSED = [
    (TRIGGERS_AT_LINE_3, "error_rate: 2", "rollback_triggers.error_rate", "must be a share from 0 to 1, got 2"),
    (TRIGGERS_AT_LINE_3, "error_rate: yes", "rollback_triggers.error_rate", "must be a number, got 'yes'"),
    (TRIGGERS_AT_LINE_3, "latency_increase: -1", "rollback_triggers.latency_increase",
     "must be a share of old's p99 from 0 to 1000 (0.20 is 20 % slower), got -1"),
    (TRIGGERS_AT_LINE_3, "latency_increase: 1000.5", "rollback_triggers.latency_increase", "got 1000.5"),
    (TRIGGERS_AT_LINE_3, "discrepancy_rate: .inf", "rollback_triggers.discrepancy_rate", "must be a share from 0 to 1"),
    (TRIGGERS_AT_LINE_3, "window: 0s", "rollback_triggers.window", "must be from 1s to 24h, got 0.0s"),
    (TRIGGERS_AT_LINE_3, "window: 25h", "rollback_triggers.window", "must be from 1s to 24h, got 90000.0s"),
    (TRIGGERS_AT_LINE_3, "window: soon", "rollback_triggers.window",
     "must be a duration such as 60s, 10m or 1h, got 'soon'"),
    (TRIGGERS_AT_LINE_3, "window: 500ms", "rollback_triggers.window", "must be from 1s to 24h, got 0.5s"),
    (TRIGGERS_AT_LINE_3, "window: -5", "rollback_triggers.window", "must be from 1s to 24h"),
    (TRIGGERS_AT_LINE_3, "window: true", "rollback_triggers.window", "must be a duration such as 60s, 10m or 1h"),
    (TRIGGERS_AT_LINE_3, "window: {s: 1}", "rollback_triggers.window", "must be a duration such as 60s, 10m or 1h"),
    (TRIGGERS_AT_LINE_3, "min_calls: 0", "rollback_triggers.min_calls", "must be a whole number of 1 or more, got 0"),
    (TRIGGERS_AT_LINE_3, "min_calls: 1.5", "rollback_triggers.min_calls", "must be a whole number, got 1.5"),
    (TRIGGERS_AT_LINE_3, "min_calls: true", "rollback_triggers.min_calls", "must be a whole number, got true"),
    (TRIGGERS_AT_LINE_3, "error_rates: 0.1", "rollback_triggers.error_rates",
     "unknown field (one of discrepancy_rate, error_rate, latency_increase, min_calls, window)"),
    (CANARY_AT_LINE_3, "interval: 10m", "canary.steps", "is required: the percentages to walk through"),
    (CANARY_AT_LINE_3, "steps: []", "canary.steps", "must list at least one percentage"),
    (CANARY_AT_LINE_3, "steps: ", "canary.steps", "must list at least one percentage"),
    (CANARY_AT_LINE_3, "steps: [1, 50, 10]", "canary.steps[2]", "must be above the step before it (50), got 10"),
    (CANARY_AT_LINE_3, "steps: [5, 5]", "canary.steps[1]", "must be above the step before it (5), got 5"),
    (CANARY_AT_LINE_3, "steps: [0, 10]", "canary.steps[0]", "must be a percentage above 0 and at most 100, got 0"),
    (CANARY_AT_LINE_3, "steps: [10, 101]", "canary.steps[1]", "must be a percentage above 0 and at most 100, got 101"),
    (CANARY_AT_LINE_3, "steps: [-1]", "canary.steps[0]", "got -1"),
    (CANARY_AT_LINE_3, "steps: ['10']", "canary.steps[0]", "got '10'"),
    (CANARY_AT_LINE_3, "steps: [[10]]", "canary.steps[0]", "got a list"),
    (CANARY_AT_LINE_3, "steps: '1, 10, 50'", "canary.steps", "must be a list, got '1, 10, 50'"),
    (CANARY_AT_LINE_3, "steps: [1], interval: 0", "canary.interval", "must be from 1s to 24h, got 0s"),
    (CANARY_AT_LINE_3, "steps: [1], interval: 25h", "canary.interval", "must be from 1s to 24h, got 90000.0s"),
    (CANARY_AT_LINE_3, "steps: [1], interval: later", "canary.interval",
     "must be a duration such as 60s, 10m or 1h, got 'later'"),
    (CANARY_AT_LINE_3, "steps: [1], interval: [10m]", "canary.interval", "got a list"),
    (CANARY_AT_LINE_3, "steps: [1], pace: 1", "canary.pace", "unknown field (steps or interval)"),
]


@pytest.mark.parametrize(("template", "body", "field", "message"), REFUSED)
def test_each_bad_value_is_refused_naming_line_and_field(template: str, body: str, field: str, message: str) -> None:
    """The section's body on line 3, written as a flow mapping: the error names line 3, the field, the rule."""
    with pytest.raises(ConfigError) as err:
        parse_flags(template.format("{" + body + "}"), "flags.yaml")
    assert str(err.value).startswith(f"flags.yaml:3: {field}: ")
    assert message in str(err.value)


@pytest.mark.parametrize(("text", "line", "field"), [
    ("rollback_triggers:\n  window: 60s\n  min_calls: 100\n  error_rate: 2\n", 4, "rollback_triggers.error_rate"),
    ("rollback_triggers:\n  error_rate: 0.5\n  min_calls: 0\n  window: 60s\n", 3, "rollback_triggers.min_calls"),
    ("rollback_triggers:\n  error_rate: 0.5\n\n  window: 25h\n", 4, "rollback_triggers.window"),
    ("canary:\n  interval: 10m\n  steps:\n    - 1\n    - 10\n    - 5\n", 6, "canary.steps[2]"),
    ("canary:\n  steps:\n    - 1\n    - 0\n", 4, "canary.steps[1]"),
    ("canary:\n  steps: [1]\n  interval: 1 week\n", 3, "canary.interval"),
    ("canary:\n  steps: [1]\n\n  size: 3\n", 4, "canary.size"),
])
def test_the_line_is_the_faulty_values_own(text: str, line: int, field: str) -> None:
    """In block style the message points at the value at fault, not at the section it sits in."""
    with pytest.raises(ConfigError, match=rf"^flags\.yaml:{line}: {re.escape(field)}: "):
        parse_flags(text, "flags.yaml")


@pytest.mark.parametrize("text", [
    "rollback_triggers: {error_rate: " + "9" * 400 + "}\n",
    "rollback_triggers: {window: " + "9" * 400 + "}\n",
    "canary: {steps: [1], interval: " + "9" * 400 + "}\n",
    "canary: {steps: [" + "9" * 400 + "]}\n",
])
def test_a_huge_number_is_refused_not_a_crash(text: str) -> None:
    """A 400-digit integer is out of range like any other, not an OverflowError that escapes the parser."""
    with pytest.raises(ConfigError, match=r"^flags\.yaml:1: (rollback_triggers|canary)\.[a-z_]+(\[0\])?: must be"):
        parse_flags(text, "flags.yaml")


@pytest.mark.parametrize(("written", "seconds"), [
    (90, 90.0), ("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1h", 3600.0), ("1.5s", 1.5), (1.5, 1.5),
    ("1000ms", 1.0), ("0.5h", 1800.0), (" 2 m ", 120.0), ("24h", 86_400.0), (1, 1.0),
])
def test_durations_are_read_in_seconds(written: object, seconds: float) -> None:
    """Seconds from a number, or a number with ms, s, m or h; the same through the file."""
    assert parse_duration(written, "canary.interval") == seconds
    shown = written if isinstance(written, int | float) else repr(written)
    assert parse_flags(f"canary: {{steps: [1], interval: {shown}}}\n").canary == CanaryPlan((1.0,), seconds)


@pytest.mark.parametrize(("written", "why"), [
    ("500ms", "must be from 1s to 24h, got 0.5s"), (0.999, "must be from 1s to 24h"),
    ("25h", "must be from 1s to 24h, got 90000.0s"), (86_400.5, "must be from 1s to 24h"),
    (float("nan"), "must be from 1s to 24h"), ("1d", "must be a duration"), ("s", "must be a duration"),
    ("1e3s", "must be a duration"), ("-1s", "must be a duration"), (True, "must be a duration"),
    (None, "must be a duration"),
])
def test_bad_durations_are_refused(written: object, why: str) -> None:
    """Below a second, above a day, or not a duration at all: refused naming the field."""
    with pytest.raises(ConfigError, match=rf"^rollback_triggers\.window: {why}"):
        parse_duration(written, "rollback_triggers.window")


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1.0, max_value=86_400.0) | st.integers(min_value=1, max_value=86_400).map(float))
def test_a_formatted_duration_reads_back_exactly(seconds: float) -> None:
    """format_duration loses nothing: what `turnout status` shows parses back to the same seconds."""
    assert parse_duration(format_duration(seconds), "window") == seconds


@pytest.mark.parametrize(("seconds", "shown"), [
    (600.0, "10m"), (3600.0, "1h"), (90.0, "90s"), (5400.0, "90m"), (1.5, "1.5s"), (86_400.0, "24h"),
    (12_345.25, "12345.25s"),
])
def test_durations_are_shown_in_the_largest_exact_unit(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


_shares = st.none() | st.floats(min_value=0.0, max_value=1.0)
_triggers = st.builds(Triggers, error_rate=_shares,
                      latency_increase=st.none() | st.floats(min_value=0.0, max_value=1000.0),
                      discrepancy_rate=_shares, window_s=st.floats(min_value=1.0, max_value=86_400.0),
                      min_calls=st.integers(min_value=1, max_value=10**9))
_canaries = st.builds(
    CanaryPlan,
    steps=st.lists(st.floats(min_value=0.001, max_value=100.0), min_size=1, max_size=6, unique=True)
    .map(lambda steps: tuple(sorted(steps))),
    interval_s=st.floats(min_value=1.0, max_value=86_400.0),
)


@settings(max_examples=200, deadline=None)
@given(triggers=st.none() | _triggers, canary=st.none() | _canaries)
def test_to_document_round_trips(triggers: Triggers | None, canary: CanaryPlan | None) -> None:
    """The file-shaped document (as `turnout status` shows it), dumped as YAML, parses back to equal Flags."""
    flags = Flags(revision="r", use_new_storage=True, read_percentage=5, rollback_triggers=triggers, canary=canary)
    assert parse_flags(yaml.safe_dump(flags.to_document())) == flags


def test_to_document_of_the_contract_example() -> None:
    """Only the armed triggers are written; durations in the file's own spelling."""
    document = parse_flags(CONTRACT_EXAMPLE).to_document()
    assert document["rollback_triggers"] == {"error_rate": 0.01, "latency_increase": 0.20, "discrepancy_rate": 0.0001,
                                             "window": "1m", "min_calls": 100}
    assert document["canary"] == {"steps": [1.0, 10.0, 50.0, 100.0], "interval": "10m"}
    assert Triggers(error_rate=0.5).to_document() == {"error_rate": 0.5, "window": "1m", "min_calls": 100}


@pytest.mark.parametrize(("build", "message"), [
    (lambda: Triggers(error_rate=1.5), r"rollback_triggers\.error_rate: must be a share from 0 to 1"),
    (lambda: Triggers(discrepancy_rate=True), r"rollback_triggers\.discrepancy_rate: must be a share"),
    (lambda: Triggers(window_s=0.5), r"rollback_triggers\.window: must be from 1s to 24h"),
    (lambda: Triggers(min_calls=True), r"rollback_triggers\.min_calls: must be a whole number of 1 or more"),
    (lambda: CanaryPlan(steps=()), r"canary\.steps: must list at least one percentage"),
    (lambda: CanaryPlan(steps=(10.0, 1.0)), r"canary\.steps\[1\]: must be above the step before it"),
    (lambda: CanaryPlan(steps=(1.0,), interval_s=90_000.0), r"canary\.interval: must be from 1s to 24h"),
])
def test_values_built_in_code_are_held_to_the_same_rules(build: Callable[[], object], message: str) -> None:
    """A tool or test that builds Triggers or CanaryPlan directly gets the file's range checks."""
    with pytest.raises(ConfigError, match=message):
        build()


def test_trigger_shares_are_kept_as_floats() -> None:
    """An integer share (`error_rate: 0`) is the float 0.0, as the guard compares it."""
    triggers = parse_flags("rollback_triggers: {error_rate: 0, latency_increase: 2}\n").rollback_triggers
    assert triggers is not None
    assert (type(triggers.error_rate), type(triggers.latency_increase)) == (float, float)


# -- through a real FlagWatcher, driven poll by poll -------------------------------------------------------

CANARY_FILE = """\
revision: {revision}
use_new_storage: true
traffic_percentage: {{read: 5, write: 5}}
canary:
  steps: {steps}
  interval: 10m
"""


def watcher_on(tmp_path: Path, text: str) -> tuple[FlagWatcher, Path]:
    """A watcher on a real file in tmp_path, polled only when the test calls check()."""
    path = tmp_path / "flags.yaml"
    path.write_text(text)
    watcher = FlagWatcher(path, tmp_path / "state")
    watcher.load_initial()
    return watcher, path


async def replace_and_poll(watcher: FlagWatcher, path: Path, text: str) -> None:
    """Write new contents with a stat that surely differs, then poll until the watcher has judged them
    (settle, read, and the one retry an unparsable file gets)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))
    for _ in range(3):
        await watcher.check()


def routed_to_new(watcher: FlagWatcher, keys: int = 2000) -> int:
    """How many of `keys` distinct keys the router in force sends to new by percentage, reads and writes."""
    count = 0
    for i in range(keys):
        get, put = watcher.router.route(Op.GET, f"k{i}"), watcher.router.route(Op.SET, f"k{i}")
        assert get.primary == put.primary  # one share for both: the step is read and write percentage
        if get.primary == Route.NEW:
            assert get.reason == Reason.PERCENTAGE
            count += 1
    return count


def percentages(watcher: FlagWatcher) -> tuple[float, float]:
    return watcher.router.flags.read_percentage, watcher.router.flags.write_percentage


async def test_an_invalid_canary_is_refused_and_the_last_good_flags_stay(tmp_path: Path) -> None:
    """A file whose canary steps go down is refused whole: revision, percentages and canary stay."""
    watcher, path = watcher_on(tmp_path, CANARY_FILE.format(revision="good", steps="[1, 10, 50]"))
    watcher.set_canary_step(1)
    await replace_and_poll(watcher, path, CANARY_FILE.format(revision="bad", steps="[1, 50, 10]"))
    status = watcher.status()
    assert status.failures == 1
    assert "flags.yaml:5: canary.steps[2]: must be above the step before it (50), got 10" in status.last_error
    assert (watcher.router.flags.revision, percentages(watcher)) == ("good", (10.0, 10.0))
    assert watcher.file_flags.canary == CanaryPlan((1.0, 10.0, 50.0), 600.0)
    await replace_and_poll(watcher, path, CANARY_FILE.format(revision="bad2", steps="[1, 10]").replace("10m", "soon"))
    assert watcher.status().failures == 2
    assert "flags.yaml:6: canary.interval: must be a duration" in watcher.status().last_error
    assert watcher.router.flags.revision == "good"


async def test_the_canary_step_sets_the_routers_percentages(tmp_path: Path) -> None:
    """Step i's percentage is both the read and the write share the router uses; file_flags keeps
    the file's traffic_percentage."""
    watcher, _ = watcher_on(tmp_path, CANARY_FILE.format(revision="c1", steps="[1, 50, 100]"))
    assert watcher.canary_step == 0
    assert percentages(watcher) == (1.0, 1.0)
    assert (watcher.file_flags.read_percentage, watcher.file_flags.write_percentage) == (5.0, 5.0)
    few = routed_to_new(watcher)
    watcher.set_canary_step(1)
    assert (watcher.canary_step, percentages(watcher)) == (1, (50.0, 50.0))
    half = routed_to_new(watcher)
    watcher.set_canary_step(2)
    assert percentages(watcher) == (100.0, 100.0)
    assert routed_to_new(watcher) == 2000
    assert few < 100 < 800 < half < 1200  # about 1 % and 50 % of 2000 distinct keys
    assert watcher.file_flags.read_percentage == 5.0
    assert watcher.router.flags.revision == watcher.file_flags.revision == "c1"


async def test_a_new_flag_file_keeps_the_step_applied(tmp_path: Path) -> None:
    """The watcher applies the step to every flag file that comes, with that file's own steps."""
    watcher, path = watcher_on(tmp_path, CANARY_FILE.format(revision="c1", steps="[1, 50, 100]"))
    watcher.set_canary_step(1)
    await replace_and_poll(watcher, path, CANARY_FILE.format(revision="c2", steps="[2, 20, 60]"))
    assert watcher.status().failures == 0
    assert (watcher.router.flags.revision, watcher.canary_step, percentages(watcher)) == ("c2", 1, (20.0, 20.0))
    assert watcher.file_flags.read_percentage == 5.0


async def test_a_step_past_the_end_is_the_last_step(tmp_path: Path) -> None:
    """A step beyond the file's steps (a plan shortened since) holds at its last percentage."""
    watcher, path = watcher_on(tmp_path, CANARY_FILE.format(revision="c1", steps="[1, 50, 100]"))
    watcher.set_canary_step(7)
    assert percentages(watcher) == (100.0, 100.0)
    await replace_and_poll(watcher, path, CANARY_FILE.format(revision="c2", steps="[1, 25]"))
    assert (watcher.router.flags.revision, percentages(watcher)) == ("c2", (25.0, 25.0))


async def test_a_file_without_canary_ignores_the_step(tmp_path: Path) -> None:
    """Without canary the percentages are traffic_percentage's whatever the step; a canary coming back
    takes the step up again."""
    watcher, path = watcher_on(tmp_path, CANARY_FILE.format(revision="c1", steps="[1, 50, 100]"))
    watcher.set_canary_step(1)
    plain = "revision: p1\nuse_new_storage: true\ntraffic_percentage: {read: 5, write: 7}\n"
    await replace_and_poll(watcher, path, plain)
    assert (watcher.router.flags.revision, percentages(watcher)) == ("p1", (5.0, 7.0))
    assert watcher.router.flags == watcher.file_flags
    watcher.set_canary_step(2)
    assert percentages(watcher) == (5.0, 7.0)
    await replace_and_poll(watcher, path, CANARY_FILE.format(revision="c2", steps="[1, 50, 100]"))
    assert percentages(watcher) == (100.0, 100.0)
