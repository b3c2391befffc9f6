"""A process's growing counters (proxy.safety.counters) and the health window made of their readings
(proxy.safety.window), read from a real Metrics and a real discrepancy Report."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.data.discrepancies import Discrepancy, Report
from proxy.safety.counters import SHADOW_ERROR, Counters
from proxy.safety.wilson import wilson
from proxy.safety.window import CallFigures, HealthWindow
from proxy.telemetry.metrics import LatencyHistogram, Metrics

STARTED = 1_800_000_000.0


def discrepancy(kind: str, op: str = "get", key: str = "k") -> Discrepancy:
    return Discrepancy(time=STARTED, op=op, key=key, kind=kind, primary="1", shadow="2", route="old", revision="r1")


class Worker:
    """One proxy process's hot-path recorders, as the guard reads them."""

    def __init__(self, started: float = STARTED) -> None:
        self.started = started
        self.metrics = Metrics()
        self.report = Report()

    def calls(self, backend: str, op: str, n: int, seconds: float = 0.001, failed: int = 0) -> None:
        for i in range(n):
            self.metrics.backend_call(backend, op, seconds, failed=i < failed)

    def compared(self, op: str, n: int, discrepancies: int = 0) -> None:
        self.report.compared[op] += n
        for i in range(discrepancies):
            self.report.add(discrepancy("value_mismatch", op, f"k{i}"))

    def reading(self) -> Counters:
        return Counters.read(self.metrics, self.report, self.started)


# Counters ------------------------------------------------------------------------------------------------


def test_a_reading_holds_calls_errors_buckets_and_comparisons() -> None:
    worker = Worker()
    worker.calls("new", "get", 10, seconds=0.001, failed=2)
    worker.calls("new", "set", 4, seconds=0.004)
    worker.calls("old", "get", 5, seconds=0.002, failed=1)
    worker.compared("get", 40, discrepancies=3)
    worker.compared("set", 10)
    worker.report.add(discrepancy(SHADOW_ERROR))
    worker.report.add(discrepancy(SHADOW_ERROR, key="k2"))

    counters = worker.reading()

    assert counters.started == STARTED
    assert counters.calls == Counter({("new", "get"): 10, ("new", "set"): 4, ("old", "get"): 5})
    assert counters.errors == Counter({("new", "get"): 2, ("old", "get"): 1})
    for pair in counters.calls:
        histogram = worker.metrics.latency[pair]
        assert counters.buckets[pair] == Counter({i: n for i, n in enumerate(histogram.counts) if n})
        assert sum(counters.buckets[pair].values()) == counters.calls[pair]
    assert counters.compared == 50
    # Failed shadow calls are the error rate's business, not the discrepancy rate's.
    assert counters.discrepancies == 3


def test_a_reading_is_a_copy_that_later_calls_do_not_change() -> None:
    worker = Worker()
    worker.calls("new", "get", 3)
    before = worker.reading()
    worker.calls("new", "get", 7, failed=7)
    worker.compared("get", 5, discrepancies=1)
    assert before.calls[("new", "get")] == 3
    assert before.errors[("new", "get")] == 0
    assert sum(before.buckets[("new", "get")].values()) == 3
    assert (before.compared, before.discrepancies) == (0, 0)


_pairs = st.tuples(st.sampled_from(["new", "old"]), st.text(min_size=1, max_size=8))
_counts = st.dictionaries(_pairs, st.integers(min_value=1, max_value=10**12), max_size=6).map(Counter)
_buckets = st.dictionaries(_pairs, st.dictionaries(st.integers(0, 184), st.integers(1, 10**9), max_size=5).map(Counter),
                           max_size=6)
_counters = st.builds(Counters, started=st.floats(min_value=0, max_value=4e9, allow_nan=False), calls=_counts,
                      errors=_counts, buckets=_buckets, compared=st.integers(0, 10**12),
                      discrepancies=st.integers(0, 10**12))


@settings(max_examples=300, deadline=None)
@given(_counters)
def test_a_document_round_trips_through_json(counters: Counters) -> None:
    """What a worker hands over (as JSON text) is read back as the same counters."""
    doc = json.loads(json.dumps(counters.to_document()))
    assert Counters.from_document(doc) == counters


def test_the_document_names_pairs_backend_slash_op() -> None:
    worker = Worker()
    worker.calls("new", "get", 2, failed=1)
    doc = worker.reading().to_document()
    assert doc["calls"] == {"new/get": 2}
    assert doc["errors"] == {"new/get": 1}
    assert doc["started"] == STARTED
    assert all(isinstance(i, str) for i in doc["buckets"]["new/get"])


def test_a_later_reading_minus_an_earlier_one_is_what_was_counted_between() -> None:
    worker = Worker()
    worker.calls("new", "get", 10, seconds=0.001, failed=1)
    worker.calls("old", "get", 10)
    worker.compared("get", 100, discrepancies=2)
    earlier = worker.reading()
    worker.calls("new", "get", 5, seconds=0.05, failed=3)
    worker.calls("new", "set", 2)
    worker.compared("get", 30, discrepancies=1)
    later = worker.reading()

    between = later.minus(earlier)

    assert between.calls == Counter({("new", "get"): 5, ("new", "set"): 2})  # old/get added nothing
    assert between.errors == Counter({("new", "get"): 3})
    # Only the 50 ms bucket grew for new/get.
    slow = LatencyHistogram()
    slow.observe(0.05)
    assert +between.buckets[("new", "get")] == Counter({slow.counts.index(1): 5})
    assert (between.compared, between.discrepancies) == (30, 1)


def test_minus_a_reading_of_another_start_is_everything() -> None:
    """A restarted process counts from zero: its whole counts are what it counted since."""
    before = Worker(started=STARTED)
    before.calls("new", "get", 1000, failed=10)
    before.compared("get", 500, discrepancies=5)
    after = Worker(started=STARTED + 30)
    after.calls("new", "get", 7, failed=1)
    after.compared("get", 3)
    now = after.reading()
    assert now.minus(before.reading()) == now
    assert now.minus(None) == now


def test_add_sums_the_workers() -> None:
    one, two = Worker(), Worker(started=STARTED + 1)
    one.calls("new", "get", 3, seconds=0.001, failed=1)
    two.calls("new", "get", 4, seconds=0.001, failed=2)
    two.calls("old", "get", 5)
    one.compared("get", 10, discrepancies=1)
    two.compared("set", 20, discrepancies=2)
    total = Counters()
    total.add(one.reading())
    total.add(two.reading())
    assert total.calls == Counter({("new", "get"): 7, ("old", "get"): 5})
    assert total.errors == Counter({("new", "get"): 3})
    assert sum(total.buckets[("new", "get")].values()) == 7
    assert (total.compared, total.discrepancies) == (30, 3)


# The health window ---------------------------------------------------------------------------------------


def steady(window: HealthWindow, worker: Worker, seconds: range, keep_s: float = 3600.0) -> None:
    """Each second: 10 calls of new/get (1 failed), 4 of old/get, 20 comparisons with 1 discrepancy."""
    for t in seconds:
        worker.calls("new", "get", 10, failed=1)
        worker.calls("old", "get", 4)
        worker.compared("get", 20, discrepancies=1)
        window.add(float(t), {"0": worker.reading()}, keep_s)


def test_a_window_is_the_newest_reading_minus_the_oldest_inside_it() -> None:
    window, worker = HealthWindow(), Worker()
    steady(window, worker, range(11))  # readings at t = 0 .. 10

    figures = window.figures(now=10.0, window_s=5.0)  # readings 5 .. 10: five seconds of calls

    assert (figures.start, figures.end, figures.span_s) == (5.0, 10.0, 5.0)
    new = figures.of("new")
    assert (new.calls, new.errors) == (50, 5)
    assert new.error_rate == pytest.approx(0.1)
    assert new.throughput == pytest.approx(10.0)
    assert figures.pairs[("new", "get")] == new  # new ran one operation only
    assert figures.of("old").calls == 20
    assert figures.of("old").errors == 0
    assert (figures.compared, figures.discrepancies) == (100, 5)
    assert figures.discrepancy_rate == pytest.approx(0.05)
    assert figures.discrepancy_interval == wilson(5, 100)


def test_a_window_longer_than_the_readings_starts_at_the_first() -> None:
    window, worker = HealthWindow(), Worker()
    steady(window, worker, range(11))
    figures = window.figures(now=10.0, window_s=60.0)
    assert figures.start == 0.0
    assert figures.of("new").calls == 100  # the first reading's own 10 calls are its base
    assert figures.of("new").throughput == pytest.approx(10.0)


def test_since_cuts_the_window() -> None:
    window, worker = HealthWindow(), Worker()
    steady(window, worker, range(11))
    figures = window.figures(now=10.0, window_s=60.0, since=7.5)
    assert figures.start == 8.0
    assert figures.of("new").calls == 20
    assert figures.compared == 40
    # A since earlier than the window changes nothing.
    assert window.figures(now=10.0, window_s=3.0, since=1.0) == window.figures(now=10.0, window_s=3.0)


def test_a_window_with_one_reading_inside_has_counted_nothing() -> None:
    window, worker = HealthWindow(), Worker()
    steady(window, worker, range(3))
    figures = window.figures(now=2.0, window_s=60.0, since=2.0)
    assert (figures.start, figures.end) == (2.0, 2.0)
    assert figures.of("new") == CallFigures()
    assert figures.pairs == {}
    assert figures.compared == 0


def test_no_readings_are_an_empty_window() -> None:
    figures = HealthWindow().figures(now=42.0, window_s=60.0)
    assert (figures.start, figures.end, figures.span_s) == (42.0, 42.0, 0.0)
    assert figures.of("new").calls == 0
    assert figures.of("new").error_rate == 0.0
    assert figures.discrepancy_rate == 0.0
    assert (figures.discrepancy_interval.low, figures.discrepancy_interval.high) == (0.0, 1.0)


def test_a_worker_that_appears_mid_window_counts_from_its_first_reading() -> None:
    window = HealthWindow()
    zero, one = Worker(), Worker(started=STARTED + 5)
    one.calls("new", "get", 1000, failed=1000)  # before its first reading: not this window's
    for t in range(11):
        zero.calls("new", "get", 10)
        readings = {"0": zero.reading()}
        if t >= 6:
            one.calls("new", "get", 5, failed=1)
            readings["1"] = one.reading()
        window.add(float(t), readings, 3600.0)

    figures = window.figures(now=10.0, window_s=10.0)

    # Worker 0: readings 0 .. 10, 100 calls; worker 1: readings 6 .. 10, 4 times 5 calls, 4 failed.
    assert figures.of("new").calls == 120
    assert figures.of("new").errors == 4


def test_a_restarted_worker_counts_what_it_counted_since_its_restart() -> None:
    window = HealthWindow()
    first = Worker(started=STARTED)
    for t in range(5):
        first.calls("new", "get", 100)
        first.compared("get", 100)
        window.add(float(t), {"0": first.reading()}, 3600.0)
    # The process restarts: its counters begin again from zero, far below the earlier readings.
    second = Worker(started=STARTED + 5)
    for t in range(5, 11):
        second.calls("new", "get", 3, failed=1)
        second.compared("get", 2, discrepancies=1)
        window.add(float(t), {"0": second.reading()}, 3600.0)

    figures = window.figures(now=10.0, window_s=8.0)  # from reading 2, before the restart

    assert figures.start == 2.0
    assert figures.of("new").calls == 18  # all of the new process's calls, nothing negative or dropped
    assert figures.of("new").errors == 6
    assert (figures.compared, figures.discrepancies) == (12, 6)


_latencies = st.lists(st.floats(min_value=5e-6, max_value=100.0, allow_nan=False), min_size=1, max_size=150)


@settings(max_examples=200, deadline=None)
@given(before=st.lists(st.floats(min_value=5e-6, max_value=100.0), max_size=100), get=_latencies,
       set_=st.lists(st.floats(min_value=5e-6, max_value=100.0), max_size=100))
def test_quantiles_from_bucket_differences_match_a_histogram_of_the_window_alone(
        before: list[float], get: list[float], set_: list[float]) -> None:
    """p50/p95/p99 of a window are those of a histogram fed only the window's latencies (the
    calls before its first reading leave no trace), per operation and per backend."""
    worker, window = Worker(), HealthWindow()
    for seconds in before:
        worker.metrics.backend_call("new", "get", seconds, failed=False)
    window.add(0.0, {"0": worker.reading()}, 60.0)
    alone_get, alone_all = LatencyHistogram(), LatencyHistogram()
    for op, latencies in (("get", get), ("set", set_)):
        for seconds in latencies:
            worker.metrics.backend_call("new", op, seconds, failed=False)
            alone_all.observe(seconds)
            if op == "get":
                alone_get.observe(seconds)
    window.add(1.0, {"0": worker.reading()}, 60.0)

    figures = window.figures(now=1.0, window_s=60.0)

    by_op, by_backend = figures.pairs[("new", "get")], figures.of("new")
    assert by_op.calls == len(get)
    assert by_backend.calls == len(get) + len(set_)
    # The same buckets and the same rank rule: the very same bucket bounds, not merely within one.
    assert (by_op.p50, by_op.p95, by_op.p99) == (alone_get.quantile(0.5), alone_get.quantile(0.95),
                                                 alone_get.quantile(0.99))
    assert (by_backend.p50, by_backend.p95, by_backend.p99) == (
        alone_all.quantile(0.5), alone_all.quantile(0.95), alone_all.quantile(0.99))


def test_readings_older_than_keep_are_forgotten() -> None:
    window, worker = HealthWindow(), Worker()
    steady(window, worker, range(101), keep_s=10.0)
    # Even a window of an hour now reaches back only to the reading at now - keep_s.
    figures = window.figures(now=100.0, window_s=3600.0)
    assert figures.start == 90.0
    assert figures.of("new").calls == 100
    window.clear()
    assert window.figures(now=100.0, window_s=3600.0).of("new").calls == 0


def test_the_document_shows_the_point_rate_beside_its_bound() -> None:
    window, worker = HealthWindow(), Worker()
    steady(window, worker, range(3))
    worker.calls("new", "set", 8, seconds=0.003, failed=2)
    window.add(3.0, {"0": worker.reading()}, 60.0)

    doc = window.figures(now=3.0, window_s=60.0).to_document()

    assert (doc["start_unix"], doc["end_unix"], doc["seconds"]) == (0.0, 3.0, 3.0)
    rates = doc["discrepancies"]
    # Readings 0 .. 3: the steady seconds 1 and 2, then the Sets.
    assert (rates["compared"], rates["discrepancies"]) == (40, 2)
    assert rates["rate"] == pytest.approx(0.05)
    interval = wilson(2, 40)
    assert (rates["bound_low"], rates["bound_high"]) == (interval.low, interval.high)
    assert rates["bound_low"] < rates["rate"] < rates["bound_high"]
    assert rates["confidence"] == 0.95
    new = doc["backends"]["new"]
    assert set(new["ops"]) == {"get", "set"}
    assert new["all"]["calls"] == 28
    assert new["all"]["errors"] == 4
    assert new["ops"]["set"]["error_rate"] == pytest.approx(0.25)
    assert set(new["ops"]["get"]) == {"calls", "errors", "error_rate", "p50", "p95", "p99", "throughput"}
    assert set(doc["backends"]["old"]["ops"]) == {"get"}
    json.dumps(doc)  # plain JSON, as status prints it
