"""What the go/no-go checkpoints remember in state_dir (proxy.safety.records): when shadow mode began,
the rollbacks and resumes since, and whether a rollback drill was done."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.safety import records
from proxy.safety.records import MAX_EVENTS, Event, SafetyRecords
from proxy.statedir import SAFETY_RECORDS_FILE

NOW = 1_800_000_000.0


def test_nothing_recorded_reads_as_never_in_shadow_with_no_events(tmp_path: Path) -> None:
    assert records.read(tmp_path) == SafetyRecords(shadow_since=None, events=())


def test_only_the_first_moment_of_shadow_mode_is_kept(tmp_path: Path) -> None:
    records.note_shadow(tmp_path, NOW)
    records.note_shadow(tmp_path, NOW + 100)
    records.note_shadow(tmp_path, NOW - 100)  # even an earlier clock does not move it
    assert records.read(tmp_path).shadow_since == NOW
    assert (tmp_path / SAFETY_RECORDS_FILE).stat().st_mode & 0o077 == 0  # the proxy's alone


def test_events_are_kept_in_order_with_their_fields(tmp_path: Path) -> None:
    records.note_shadow(tmp_path, NOW)
    rollback = Event("rollback", NOW + 1, automatic=True, reason="error_rate 0.05 > 0.01")
    resume = Event("resume", NOW + 2)
    records.note_event(tmp_path, rollback)
    records.note_event(tmp_path, resume)
    assert records.read(tmp_path) == SafetyRecords(NOW, (rollback, resume))


def test_noting_shadow_mode_keeps_the_events_noted_before(tmp_path: Path) -> None:
    records.note_event(tmp_path, Event("rollback", NOW - 5))
    records.note_shadow(tmp_path, NOW)
    assert records.read(tmp_path) == SafetyRecords(NOW, (Event("rollback", NOW - 5),))


def test_only_the_newest_max_events_are_kept(tmp_path: Path) -> None:
    records.note_shadow(tmp_path, NOW)
    for i in range(MAX_EVENTS + 7):
        records.note_event(tmp_path, Event("rollback" if i % 2 else "resume", NOW + i, reason=str(i)))
    kept = records.read(tmp_path)
    assert len(kept.events) == MAX_EVENTS
    assert [e.reason for e in kept.events] == [str(i) for i in range(7, MAX_EVENTS + 7)]
    assert kept.shadow_since == NOW


# drill_done ---------------------------------------------------------------------------------------------


def test_no_drill_before_shadow_mode() -> None:
    done, why = SafetyRecords(None, (Event("rollback", NOW), Event("resume", NOW + 1))).drill_done()
    assert done is False
    assert why == "shadow mode has not been on"


def test_no_drill_with_a_rollback_alone() -> None:
    done, why = SafetyRecords(NOW, (Event("rollback", NOW + 1),)).drill_done()
    assert done is False
    assert why == "a rollback, but no resume after it"


def test_no_drill_with_no_events() -> None:
    assert SafetyRecords(NOW, ()).drill_done() == (False, "no rollback since shadow mode began")


def test_a_rollback_then_a_resume_after_shadow_began_is_a_drill(tmp_path: Path) -> None:
    records.note_shadow(tmp_path, NOW)
    records.note_event(tmp_path, Event("rollback", NOW + 10, automatic=True))
    assert records.read(tmp_path).drill_done()[0] is False
    records.note_event(tmp_path, Event("resume", NOW + 20))
    assert records.read(tmp_path).drill_done() == (True, "a rollback and a resume since shadow mode began")


def test_a_rollback_before_shadow_began_is_no_drill() -> None:
    done, why = SafetyRecords(NOW, (Event("rollback", NOW - 1), Event("resume", NOW + 1))).drill_done()
    assert done is False
    assert why == "no rollback since shadow mode began"


def test_a_resume_before_the_rollback_is_no_drill() -> None:
    done, why = SafetyRecords(NOW, (Event("resume", NOW + 1), Event("rollback", NOW + 2))).drill_done()
    assert done is False
    assert why == "a rollback, but no resume after it"


@pytest.mark.parametrize("at", [NOW, NOW + 5])
def test_events_at_the_very_moment_count(at: float) -> None:
    """A rollback the moment shadow mode began, and a resume in the same instant, are a drill."""
    assert SafetyRecords(NOW, (Event("rollback", at), Event("resume", at))).drill_done()[0] is True


_events = st.lists(st.builds(Event, kind=st.sampled_from(["rollback", "resume"]),
                             time=st.floats(min_value=NOW - 100, max_value=NOW + 100)), max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.none() | st.floats(min_value=NOW - 100, max_value=NOW + 100), _events)
def test_a_drill_is_a_rollback_and_a_resume_no_earlier_both_since_shadow_began(shadow_since: float | None,
                                                                               events: list[Event]) -> None:
    """Events are noted as they happen, so in time order; a drill is any pair of them."""
    ordered = tuple(sorted(events, key=lambda e: e.time))
    done, _ = SafetyRecords(shadow_since, ordered).drill_done()
    expected = shadow_since is not None and any(
        rollback.kind == "rollback" and resume.kind == "resume" and shadow_since <= rollback.time <= resume.time
        for rollback in ordered for resume in ordered)
    assert done is expected
