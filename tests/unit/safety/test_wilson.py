"""The Wilson score interval of a rate (proxy.safety.wilson): known values, and the properties the
discrepancy trigger leans on (the point rate inside it, narrower with more samples, symmetric)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.safety.wilson import Z_95, wilson


def test_z_is_the_two_sided_95_percent_normal_quantile() -> None:
    # Φ(z) = 0.975: erf(z / √2) = 0.95.
    assert math.erf(Z_95 / math.sqrt(2)) == pytest.approx(0.95, abs=1e-12)


def test_none_of_40_is_up_to_8_8_percent() -> None:
    """The issue's example: "0 of 40 compared" is no evidence of a rate near 0."""
    interval = wilson(0, 40)
    assert interval.low == 0.0
    assert interval.high == pytest.approx(0.0876, abs=1e-4)
    # With no events the upper bound has a closed form: z² / (n + z²).
    assert interval.high == pytest.approx(Z_95**2 / (40 + Z_95**2), rel=1e-12)


def test_one_of_100_matches_the_published_interval() -> None:
    # The textbook 95 % Wilson interval of 1/100 is 0.18 % to 5.45 %.
    interval = wilson(1, 100)
    assert interval.low == pytest.approx(0.001767, abs=1e-6)
    assert interval.high == pytest.approx(0.054486, abs=1e-6)


def test_half_of_100_is_symmetric_about_one_half() -> None:
    interval = wilson(50, 100)
    assert interval.low == pytest.approx(0.40383, abs=1e-5)
    assert interval.low + interval.high == pytest.approx(1.0, abs=1e-12)


def test_nothing_tried_is_the_whole_range() -> None:
    assert (wilson(0, 0).low, wilson(0, 0).high) == (0.0, 1.0)
    assert (wilson(3, -1).low, wilson(3, -1).high) == (0.0, 1.0)


@pytest.mark.parametrize("n", [1, 2, 40, 1000, 50_000])
def test_every_trial_an_event_reaches_one_exactly(n: int) -> None:
    interval = wilson(n, n)
    assert interval.high == 1.0
    assert 0.0 < interval.low < 1.0


def test_counts_outside_zero_to_trials_are_clamped() -> None:
    assert wilson(-5, 40) == wilson(0, 40)
    assert wilson(41, 40) == wilson(40, 40)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=1, max_value=10**7).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_the_point_rate_lies_inside_its_interval(counts: tuple[int, int]) -> None:
    events, trials = counts
    interval = wilson(events, trials)
    assert 0.0 <= interval.low <= events / trials <= interval.high <= 1.0
    assert interval.low < interval.high


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=10**6).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_the_interval_is_symmetric_in_events_and_non_events(counts: tuple[int, int]) -> None:
    events, trials = counts
    assert wilson(events, trials).low == pytest.approx(1.0 - wilson(trials - events, trials).high, abs=1e-12)
    assert wilson(events, trials).high == pytest.approx(1.0 - wilson(trials - events, trials).low, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=20), st.integers(min_value=1, max_value=50), st.integers(2, 10))
def test_more_samples_at_the_same_rate_narrow_the_interval(events: int, extra: int, factor: int) -> None:
    """k of n against factor·k of factor·n: the same point rate, a strictly narrower interval."""
    trials = events + extra
    small, large = wilson(events, trials), wilson(events * factor, trials * factor)
    assert large.high - large.low < small.high - small.low
    # It narrows from both sides (at 0 events the low side stays at 0).
    assert large.high < small.high
    assert large.low >= small.low


def test_the_bound_of_zero_events_falls_below_a_small_threshold_only_with_many_samples() -> None:
    """What the discrepancy trigger needs: about 3/threshold comparisons before 0 events can be ok."""
    threshold = 0.0001
    assert wilson(0, 38_000).high > threshold
    assert wilson(0, 39_000).high < threshold
