"""Shadow mode in front of two stores that differ: every discrepancy kind on the wire to an OTLP
receiver, in `turnout discrepancies --json` and on /metrics, while callers get the primary's answer."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from turnout import KeyNotFound, SyncClient
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

from proxy.backends.jsondir import encode_name
from tests.support.otlp_receiver import GrpcReceiver, HttpReceiver, ReceivedSpan
from tests.support.proxy_process import ProxyProcess, get_page, http_address, write_config

FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_INSECURE": "true"}
OLD = {"same": {"a": 1, "b": 2}, "num": 1, "diff": 1, "only-old": "o"}
NEW = {"same": {"b": 2, "a": 1}, "num": 1.0, "diff": 2, "only-new": "n"}


def seed(folder: Path) -> Path:
    (folder / "legacy.json").write_text(json.dumps(OLD))
    store = folder / "new.d"
    store.mkdir()
    for key, value in NEW.items():
        (store / f"{encode_name(key)}.json").write_text(json.dumps(value))
    (folder / "flags.yaml").write_text("revision: shadow-1\nuse_new_storage: true\nshadow_mode_enabled: true\n")
    return write_config(folder, old={"type": "jsonfile", "path": "legacy.json"},
                        new={"type": "jsondir", "path": "new.d"})


def discrepancy_spans(spans: list[ReceivedSpan]) -> dict[str, str]:
    """key → kind, from the discrepancy spans (keys are on spans because the config records them)."""
    return {str(s.attributes.get("turnout.key")): str(s.attributes["turnout.discrepancy.kind"])
            for s in spans if s.name == "turnout.discrepancy"}


def test_every_discrepancy_kind_is_reported_even_unsampled(tmp_path: Path, receiver: GrpcReceiver) -> None:
    """With sampling at 0, each discrepancy still reaches the exporter, the log and the metrics."""
    config = seed(tmp_path)
    config.write_text(config.read_text() + "telemetry: {record_keys: true}\n")
    env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_TRACES_SAMPLER": "traceidratio",
           "OTEL_TRACES_SAMPLER_ARG": "0"}
    with ProxyProcess(config, env) as proxy, SyncClient(proxy.target) as kv:
        assert kv.get("same") == {"a": 1, "b": 2}
        assert kv.get("num") == 1
        assert kv.get("diff") == 1  # the primary's answer, not the shadow's
        assert kv.get("only-old") == "o"
        with pytest.raises(KeyNotFound):
            kv.get("only-new")
        assert not kv.has("only-new")
        assert sorted(kv.keys("")) == ["diff", "num", "only-old", "same"]
        spans = receiver.spans.wait_for(lambda s: len(discrepancy_spans(s)) >= 4)
        assert discrepancy_spans(spans) == {"diff": "value_mismatch", "only-old": "missing_in_shadow",
                                            "only-new": "extra_in_shadow", "": "missing_in_shadow"}
        assert all(s.name == "turnout.discrepancy" for s in spans)  # nothing else was sampled
        http = http_address(tmp_path / "state")
        counted = get_page(http, "/metrics?records=1")
        assert 'turnout_backend_records{backend="old"} 4' in counted
        assert 'turnout_backend_records{backend="new"} 4' in counted
        checksums = re.findall(r'turnout_backend_checksum_info\{backend="(old|new)",checksum="([0-9a-f]{16})"\} 1',
                               counted)
        assert len(checksums) == 2
        assert checksums[0][1] != checksums[1][1]
        shutil.rmtree(tmp_path / "new.d")
        kv.set("written", {"v": 1})  # the shadow write fails; the caller does not notice
        receiver.spans.wait_for(lambda s: discrepancy_spans(s).get("written") == "shadow_error")
        span = next(s for s in receiver.spans.all() if s.attributes.get("turnout.key") == "written")
        assert span.attributes["turnout.route"] == "old"
        assert span.attributes["turnout.flags.revision"] == "shadow-1"
        assert span.attributes["turnout.discrepancy"] is True
        (tmp_path / "new.d").mkdir()  # the store is back: the replication queue can deliver the write

        metrics = get_page(http, "/metrics")
        assert 'turnout_discrepancies_total{kind="value_mismatch"} 1' in metrics
        assert 'turnout_discrepancies_total{kind="missing_in_shadow"} 2' in metrics
        assert "turnout_backend_records" not in metrics  # counting a whole store only on request
        assert 'turnout_discrepancies_total{kind="shadow_error"} 1' in metrics
        assert 'turnout_operations_total{op="get",route="old"} 5' in metrics
        assert 'turnout_backend_latency_seconds{backend="old",op="get",quantile="0.99"}' in metrics
        assert "turnout_discrepancy_rate " in metrics

        deadline = time.monotonic() + 5
        while True:
            result = subprocess.run([sys.executable, "-m", "proxy.cli", "discrepancies", "--json", "--config",
                                     str(config)], capture_output=True, text=True, timeout=30)
            report: dict[str, Any] = json.loads(result.stdout)
            if report["total"] >= 6 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert report["by_kind"] == {"value_mismatch": 1, "missing_in_shadow": 2, "extra_in_shadow": 2,
                                     "shadow_error": 1}
        assert report["by_op"] == {"get": 3, "has": 1, "keys": 1, "set": 1}
        assert report["compared"] >= 8
        assert 0 < report["rate"] < 1
        status = json.loads(subprocess.run([sys.executable, "-m", "proxy.cli", "status", "--json", "--config",
                                            str(config)], capture_output=True, text=True, timeout=30).stdout)
        assert status["shadow"]["discrepancies"] == 6
        assert status["shadow"]["by_kind"]["extra_in_shadow"] == 2
        first = report["first"][0]
        # Values are recorded only with discrepancies.record_values (contract §5): sizes, digests, paths are.
        assert (first["key"], first["kind"], first["primary"], first["shadow"]) == ("diff", "value_mismatch", None, None)
        assert (first["primary_size"], first["shadow_size"], first["paths"]) == (1, 1, ["$"])
        assert first["revision"] == "shadow-1"
        assert first["time"] > 0
        listing = next(d for d in report["first"] + report["latest"] if d["op"] == "keys")
        assert "missing in shadow: 1 ['only-old']; extra in shadow: 1 ['only-new']" in listing["detail"]


def test_sampled_calls_carry_the_contract_attributes(tmp_path: Path, receiver: GrpcReceiver) -> None:
    """An always-on trace continues the caller's traceparent, with route attributes and a child span per backend."""
    config = seed(tmp_path)
    env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_TRACES_SAMPLER": "always_on"}
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with ProxyProcess(config, env) as proxy, grpc.insecure_channel(proxy.target) as channel:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        stub.Get(kv_pb2.GetRequest(key="diff"),
                 metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"), ("x-turnout-user", "checkout")))
        spans = receiver.spans.wait_for(lambda s: any(x.name == "turnout.kv.v1.KeyValue/Get" for x in s)
                                        and sum(x.attributes.get("turnout.backend") is not None for x in s) >= 2)
    server = next(s for s in spans if s.name == "turnout.kv.v1.KeyValue/Get")
    assert (server.trace_id, server.parent_span_id) == (trace_id, parent_id)
    assert server.attributes["turnout.route"] == "old"
    assert server.attributes["turnout.route.reason"] == "default"
    assert server.attributes["turnout.shadow"] is True
    assert server.attributes["turnout.flags.revision"] == "shadow-1"
    assert "turnout.key" not in server.attributes  # keys only when the config asks
    children = {s.attributes["turnout.backend"]: s for s in spans if "turnout.backend" in s.attributes}
    assert children["old"].attributes["turnout.backend.type"] == "jsonfile"
    assert children["new"].attributes["turnout.backend.type"] == "jsondir"
    assert {c.parent_span_id for c in children.values()} == {server.span_id}
    assert all(c.trace_id == trace_id for c in children.values())


def test_http_protobuf_export_works_too(tmp_path: Path) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf sends the same spans over OTLP/HTTP."""
    receiver = HttpReceiver()
    try:
        config = seed(tmp_path)
        env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_SAMPLER": "always_on"}
        with ProxyProcess(config, env) as proxy, SyncClient(proxy.target) as kv:
            kv.get("diff")
            spans = receiver.spans.wait_for(lambda s: any(x.name == "turnout.discrepancy" for x in s))
        assert any(s.name == "turnout.kv.v1.KeyValue/Get" for s in spans)
    finally:
        receiver.stop()


def test_a_dead_collector_costs_callers_nothing(tmp_path: Path) -> None:
    """With the collector's port closed, every call still succeeds with the primary's answer."""
    config = seed(tmp_path)
    env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_SAMPLER": "always_on"}
    with ProxyProcess(config, env) as proxy, SyncClient(proxy.target, timeout=5) as kv:
        for i in range(300):
            kv.set(f"k{i}", i)
            assert kv.get(f"k{i}") == i
