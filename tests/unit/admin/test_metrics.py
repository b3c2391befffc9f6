"""/metrics through prometheus-client: today's families (names, types, labels) from a collector that
reads the data plane at scrape time, latency as a summary, label values escaped."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin.metrics import Families, flag_families, latency_family
from proxy.data.dispatcher import Call
from proxy.routing.watcher import FlagWatcher
from proxy.telemetry.metrics import Metrics
from tests.support.metric_families import OPEN, RECORDS, STARTING, shape
from tests.unit.admin.conftest import Side

SAMPLE_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? \S+$')

def assert_prometheus_text(text: str) -> None:
    """Every line is a HELP, a TYPE or a well-formed sample; the text ends with a newline."""
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE_LINE.match(line), line


async def busy(side: Side) -> None:
    """Calls that leave a sample in every family: writes, reads compared in shadow, a failing shadow."""
    side.open()
    await side.dispatcher.set("k", b"1", Call())
    await side.dispatcher.get("k", Call())
    side.new.down = True
    await side.dispatcher.get("k", Call())
    side.new.down = False


async def test_the_page_has_exactly_todays_families_with_their_types_and_labels(side: Side) -> None:
    """Once the backends are open, /metrics has today's families, no more, no fewer, each of its type
    and labels; every family holds a sample."""
    await busy(side)
    reply = await side.get("/metrics")
    assert reply.status == 200
    assert reply.content_type == CONTENT_TYPE_PLAIN_0_0_4
    assert_prometheus_text(reply.body)
    assert shape(reply.body) == OPEN
    assert all(family.samples for family in text_string_to_metric_families(reply.body))


async def test_records_are_counted_only_on_request(side: Side) -> None:
    """`?records=1` adds each backend's record count and checksum to today's families, and only then."""
    await busy(side)
    counted = (await side.get("/metrics?records=1")).body
    assert shape(counted) == {**OPEN, **RECORDS}
    assert 'turnout_backend_records{backend="old"} 1.0' in counted
    assert len(re.findall(r'turnout_backend_checksum_info\{backend="(old|new)",checksum="[0-9a-f]{16}"\} 1', counted)) == 2
    assert shape((await side.get("/metrics")).body) == OPEN


async def test_before_the_backends_open_only_the_flag_families_are_shown(side: Side) -> None:
    """A scrape during start-up answers, with the flag families alone."""
    reply = await side.get("/metrics")
    assert reply.status == 200
    assert shape(reply.body) == STARTING


async def test_counters_follow_the_data_plane_at_scrape_time(side: Side) -> None:
    """Two scrapes around a call see it counted: the collector reads the live counters, not a copy."""
    side.open()
    await side.dispatcher.set("k", b"1", Call())
    first = (await side.get("/metrics")).body
    await side.dispatcher.set("k", b"2", Call())
    second = (await side.get("/metrics")).body
    assert 'turnout_operations_total{op="set",route="old"} 1.0' in first
    assert 'turnout_operations_total{op="set",route="old"} 2.0' in second


def test_latency_is_kept_per_backend_and_rendered_as_a_summary() -> None:
    """Each backend's calls give p50/p95/p99 samples, a _sum and a _count."""
    metrics = Metrics()
    for _ in range(90):
        metrics.backend_call("old", "get", 0.001, failed=False)
    for _ in range(10):
        metrics.backend_call("old", "get", 0.1, failed=False)
    metrics.backend_call("new", "get", 0.002, failed=True)
    text = generate_latest(Families([latency_family(metrics)])).decode()
    assert_prometheus_text(text)
    assert "# TYPE turnout_backend_latency_seconds summary\n" in text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if not line.startswith("#")}
    assert 0.001 <= values['turnout_backend_latency_seconds{backend="old",op="get",quantile="0.5"}'] < 0.0011
    assert 0.1 <= values['turnout_backend_latency_seconds{backend="old",op="get",quantile="0.95"}'] < 0.11
    assert 0.1 <= values['turnout_backend_latency_seconds{backend="old",op="get",quantile="0.99"}'] < 0.11
    assert values['turnout_backend_latency_seconds_count{backend="old",op="get"}'] == 100
    assert values['turnout_backend_latency_seconds_count{backend="new",op="get"}'] == 1
    assert 1.08 < values['turnout_backend_latency_seconds_sum{backend="old",op="get"}'] < 1.1
    assert metrics.backend_error_rate("new") == 1.0
    assert metrics.backend_error_rate("old") == 0.0


def test_label_values_are_escaped(tmp_path: Path) -> None:
    """A flag revision with quotes, backslashes or newlines still gives valid Prometheus text."""
    revision = 'a"b\\c\nd'
    (tmp_path / "flags.yaml").write_text(yaml.safe_dump({"revision": revision}))
    watcher = FlagWatcher(tmp_path / "flags.yaml", tmp_path)
    watcher.load_initial()
    text = generate_latest(Families(flag_families(watcher))).decode()
    assert_prometheus_text(text)
    assert 'revision="a\\"b\\\\c\\nd"' in text
    (info,) = (f for f in text_string_to_metric_families(text) if f.name == "turnout_flags_info")
    assert info.samples[0].labels == {"revision": revision}
