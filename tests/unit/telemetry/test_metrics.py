"""Shadow-mode metrics: latency quantiles per backend, their status document, and a content checksum stores
agree on (the Prometheus page built from them is tested in tests/unit/admin/test_metrics.py)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.backends.memory import MemoryBackend
from proxy.migration.checksum import summarize
from proxy.telemetry.metrics import LatencyHistogram, Metrics


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
