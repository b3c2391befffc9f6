"""Shadow-mode metrics: latency quantiles per backend, Prometheus text, and a content checksum stores agree on."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.backends.memory import MemoryBackend
from proxy.migration.checksum import summarize
from proxy.telemetry.metrics import Exposition, LatencyHistogram, Metrics, render_latency

SAMPLE_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? \S+$')


def assert_prometheus_text(text: str) -> None:
    """Every line is a HELP, a TYPE or a well-formed sample; the text ends with a newline."""
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE_LINE.match(line), line


@given(st.lists(st.floats(min_value=20e-6, max_value=60.0), min_size=1, max_size=200),
       st.sampled_from([0.5, 0.95, 0.99]))
def test_a_quantile_is_within_one_bucket_above_the_true_value(observations: list[float], q: float) -> None:
    """p50/p95/p99 are never below the true quantile and at most one ~9 % bucket above it."""
    histogram = LatencyHistogram()
    for seconds in observations:
        histogram.observe(seconds)
    ordered = sorted(observations)
    rank = max(1, -(-q * len(ordered) // 1))  # the q-th observation, counted from 1
    true = ordered[int(rank) - 1]
    assert true <= histogram.quantile(q) <= true * 2 ** (1 / 8) * 1.0000001


def test_latency_is_kept_per_backend_and_rendered_as_a_summary() -> None:
    """Each backend's calls give p50/p95/p99 samples, a _sum and a _count."""
    metrics = Metrics()
    for _ in range(90):
        metrics.backend_call("old", "get", 0.001, failed=False)
    for _ in range(10):
        metrics.backend_call("old", "get", 0.1, failed=False)
    metrics.backend_call("new", "get", 0.002, failed=True)
    out = Exposition()
    render_latency(out, metrics)
    text = out.text()
    assert_prometheus_text(text)
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if not line.startswith("#")}
    assert 0.001 <= values['turnout_backend_latency_seconds{backend="old",op="get",quantile="0.5"}'] < 0.0011
    assert 0.1 <= values['turnout_backend_latency_seconds{backend="old",op="get",quantile="0.95"}'] < 0.11
    assert 0.1 <= values['turnout_backend_latency_seconds{backend="old",op="get",quantile="0.99"}'] < 0.11
    assert values['turnout_backend_latency_seconds_count{backend="old",op="get"}'] == 100
    assert values['turnout_backend_latency_seconds_count{backend="new",op="get"}'] == 1
    assert metrics.backend_error_rate("new") == 1.0
    assert metrics.backend_error_rate("old") == 0.0


def test_label_values_are_escaped() -> None:
    """A flag revision with quotes, backslashes or newlines still gives valid Prometheus text."""
    out = Exposition()
    out.family("turnout_flags_info", "gauge", "The flag revision in force.", [({"revision": 'a"b\\c\nd'}, 1)])
    assert_prometheus_text(out.text())
    assert 'revision="a\\"b\\\\c\\nd"' in out.text()


documents = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=6,
)


async def checksum_of(items: dict[str, bytes]) -> tuple[int, str]:
    backend = MemoryBackend()
    for key, value in items.items():
        await backend.set(key, value)
    summary = await summarize(backend)
    return summary.records, summary.checksum


@settings(deadline=None)  # each example opens a backend; a busy CI machine is no failure
@given(st.dictionaries(st.text(min_size=1, max_size=5), documents, max_size=8))
async def test_stores_holding_the_same_documents_agree_on_count_and_checksum(items: dict[str, Any]) -> None:
    """Key order inside documents and whitespace do not change the checksum; the record count is exact."""
    compact = {k: json.dumps(v, separators=(",", ":")).encode() for k, v in items.items()}
    pretty = {k: json.dumps(v, indent=2, sort_keys=True).encode() for k, v in reversed(items.items())}
    assert await checksum_of(compact) == await checksum_of(pretty)
    assert (await checksum_of(compact))[0] == len(items)


async def test_a_changed_missing_or_extra_record_changes_the_checksum() -> None:
    """Each kind of difference between two stores shows in the checksum."""
    base = {"a": b'{"x":1}', "b": b"2"}
    reference = await checksum_of(base)
    assert (await checksum_of({**base, "b": b"3"}))[1] != reference[1]
    assert await checksum_of({"a": base["a"]}) != reference
    assert await checksum_of({**base, "c": b"null"}) != reference


def test_the_status_document_has_operations_by_route_and_latency_quantiles_by_backend() -> None:
    """`turnout status --json` can show the same figures as /metrics without parsing Prometheus text."""
    metrics = Metrics()
    metrics.operation("get", "old")
    metrics.operation("get", "old")
    metrics.operation("get", "new")
    metrics.backend_call("old", "get", 0.001, failed=False)
    metrics.backend_call("new", "get", 0.004, failed=True)
    doc = metrics.to_document()
    assert doc["operations"] == {"get": {"new": 1, "old": 2}}
    assert doc["latency"]["new"]["get"]["count"] == 1
    assert doc["latency"]["new"]["get"]["errors"] == 1
    assert 0.001 <= doc["latency"]["old"]["get"]["p99"] < 0.0011
    assert json.loads(json.dumps(doc)) == doc
