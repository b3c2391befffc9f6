"""Spans as contract §4 has them, set up from the OTEL_* variables alone, with every discrepancy exported."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import SpanKind

from proxy.backends.memory import MemoryBackend
from proxy.data.discrepancies import DiscrepancyLog
from proxy.data.dispatcher import Call, Dispatcher
from proxy.data.keylocks import KeyLocks
from proxy.replication.local import ReplicationQueue
from proxy.routing.flags import Flags
from proxy.routing.router import Route, Router
from proxy.telemetry import tracing as telemetry
from proxy.telemetry.tracing import Telemetry, tracing_configured

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")
UNSAMPLED_TRACEPARENT = ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00")


@dataclass
class Routes:
    router: Router


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
])
def test_tracing_is_on_only_when_the_otel_variables_say_so(env: dict[str, str], on: bool) -> None:
    """No endpoint, no tracing; OTEL_SDK_DISABLED and OTEL_TRACES_EXPORTER=none turn it off."""
    assert tracing_configured(env) is on


@pytest.mark.parametrize(("env", "kind"), [
    ({}, GrpcExporter),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, GrpcExporter),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, HttpExporter),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, HttpExporter),
])
def test_the_otlp_protocol_follows_the_standard_variables(env: dict[str, str], kind: type) -> None:
    """grpc by default, http/protobuf on request; the traces-specific variable wins."""
    assert isinstance(telemetry._exporter(env), kind)


def traced(monkeypatch: pytest.MonkeyPatch, sampler: str, record_keys: bool = False,
           ) -> tuple[Telemetry, InMemorySpanExporter]:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    if sampler == "traceidratio":
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter = InMemorySpanExporter()
    return Telemetry(enabled=True, record_keys=record_keys, exporter=exporter), exporter


async def build(tmp_path: Path, tracing: Telemetry) -> Dispatcher:
    old, new = MemoryBackend(), MemoryBackend()
    for backend, items in ((old, {"same": b'{"a":1}', "diff": b"1"}), (new, {"same": b'{ "a": 1.0 }', "diff": b"2"})):
        for key, value in items.items():
            await backend.set(key, value)
    locks = KeyLocks()
    queue = ReplicationQueue(MemoryBackend(), {"old": old, "new": new}, locks)
    routes = Routes(Router(Flags(revision="r-7", use_new_storage=True, shadow_mode_enabled=True)))
    return Dispatcher({Route.OLD: old, Route.NEW: new}, routes, queue, locks, DiscrepancyLog(tmp_path),
                      telemetry=tracing)


async def get(dispatcher: Dispatcher, key: str, metadata: list[tuple[str, str]]) -> bytes | None:
    call = Call(None, dispatcher.telemetry.server_span("Get", metadata))
    value = await dispatcher.get(key, call)
    await dispatcher.close()  # the comparison finishes
    if call.span is not None:
        call.span.end()
    return value


def finished(tracing: Telemetry, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    tracing.shutdown()
    return list(exporter.get_finished_spans())


async def test_a_call_continues_the_callers_trace_with_the_contract_attributes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One server span named by the gRPC method, in the caller's trace, and a child span per backend call."""
    tracing, exporter = traced(monkeypatch, "always_on")
    dispatcher = await build(tmp_path, tracing)
    assert await get(dispatcher, "diff", [TRACEPARENT, ("x-turnout-user", "u")]) == b"1"
    spans = finished(tracing, exporter)
    server = next(s for s in spans if s.name == "turnout.kv.v1.KeyValue/Get")
    assert server.kind is SpanKind.SERVER
    assert server.context is not None
    assert server.parent is not None
    assert (f"{server.context.trace_id:032x}", f"{server.parent.span_id:016x}") == (TRACE_ID, PARENT_ID)
    assert dict(server.attributes or {}) == {
        "turnout.route": "old", "turnout.route.reason": "default", "turnout.shadow": True,
        "turnout.flags.revision": "r-7", "turnout.discrepancy": True, "turnout.discrepancy.kind": "value_mismatch",
    }
    children = [s for s in spans if s.attributes and "turnout.backend" in s.attributes]
    assert sorted(str((s.attributes or {})["turnout.backend"]) for s in children) == ["new", "old"]
    assert {(s.attributes or {})["turnout.backend.type"] for s in children} == {"memory"}
    assert all(s.parent is not None and s.parent.span_id == server.context.span_id for s in children)


@pytest.mark.parametrize("sampler", ["traceidratio", "always_off", "parentbased_always_on"])
async def test_every_discrepancy_is_exported_even_when_its_call_is_not_sampled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampler: str
) -> None:
    """Sampled out (ratio 0, always_off, or a caller's unsampled traceparent), a discrepancy still leaves as a span."""
    tracing, exporter = traced(monkeypatch, sampler)
    dispatcher = await build(tmp_path, tracing)
    await get(dispatcher, "same", [UNSAMPLED_TRACEPARENT])  # equal as JSON: nothing to export
    await get(dispatcher, "diff", [UNSAMPLED_TRACEPARENT])
    spans = finished(tracing, exporter)
    assert [s.name for s in spans] == ["turnout.discrepancy"]
    attributes = dict(spans[0].attributes or {})
    assert attributes["turnout.discrepancy"] is True
    assert attributes["turnout.discrepancy.kind"] == "value_mismatch"
    assert attributes["turnout.route"] == "old"
    assert attributes["turnout.flags.revision"] == "r-7"


@pytest.mark.parametrize("record_keys", [False, True])
async def test_keys_are_on_spans_only_when_the_config_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_keys: bool
) -> None:
    """telemetry.record_keys: false keeps every key off every span; true puts it on the server and discrepancy spans."""
    tracing, exporter = traced(monkeypatch, "always_on", record_keys)
    dispatcher = await build(tmp_path, tracing)
    await get(dispatcher, "diff", [])
    spans = finished(tracing, exporter)
    with_key = {s.name for s in spans if "turnout.key" in (s.attributes or {})}
    text = repr([(s.name, dict(s.attributes or {}), [dict(e.attributes or {}) for e in s.events]) for s in spans])
    if record_keys:
        assert with_key == {"turnout.kv.v1.KeyValue/Get", "turnout.discrepancy"}
    else:
        assert with_key == set()
        assert "'diff'" not in text


def test_tracing_off_starts_no_span() -> None:
    """With tracing off, a call gets no span at all."""
    tracing = Telemetry(enabled=False)
    assert tracing.server_span("Get", [TRACEPARENT]) is None
    tracing.discrepancy(None, {"turnout.discrepancy": True})  # a no-op, not an error


async def test_the_end_of_a_keys_listing_is_not_a_failed_backend_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing keys to the end leaves no error in the metrics and no backend span with an error status."""
    tracing, exporter = traced(monkeypatch, "always_on")
    dispatcher = await build(tmp_path, tracing)
    call = Call(None, tracing.server_span("Keys", []))
    pages = [page async for page in dispatcher.keys("", call)]
    await dispatcher.close()
    assert call.span is not None
    call.span.end()
    assert sorted(key for page in pages for key in page) == ["diff", "same"]
    spans = finished(tracing, exporter)
    assert not dispatcher.metrics.errors
    assert all(s.status.status_code.name != "ERROR" for s in spans)


@pytest.mark.parametrize("sampler", ["traceidratio", "parentbased_traceidratio"])
def test_a_ratio_sampler_keeps_its_share_of_root_calls_with_trace_ids_it_would_keep(
    monkeypatch: pytest.MonkeyPatch, sampler: str
) -> None:
    """Decided before any span exists, a quarter of untraced calls get a span, each with a trace id the
    SDK's own TraceIdRatioBased keeps; the rest get no span at all."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    tracing = Telemetry(enabled=True, exporter=InMemorySpanExporter())
    spans = [tracing.server_span("Get", [("x-turnout-user", "u")]) for _ in range(4000)]
    kept = [span for span in spans if span is not None]
    assert 0.21 < len(kept) / len(spans) < 0.29  # about 6 standard deviations either side
    bound = TraceIdRatioBased.get_bound_for_rate(0.25)
    for span in kept:
        assert span.is_recording()
        assert span.get_span_context().trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < bound
        span.end()
    assert len({span.get_span_context().trace_id for span in kept}) == len(kept)
    tracing.shutdown()


@pytest.mark.parametrize(("rate", "kept"), [("0", 0), ("1", 50), ("2.5", 50), ("nonsense", 50)])
def test_ratio_edges_and_unreadable_ratios_follow_the_sdk(
    monkeypatch: pytest.MonkeyPatch, rate: str, kept: int
) -> None:
    """Ratio 0 keeps no untraced call and 1 keeps each; a ratio out of range or unreadable means 1, as in the SDK."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", rate)
    tracing = Telemetry(enabled=True, exporter=InMemorySpanExporter())
    spans = [tracing.server_span("Get", []) for _ in range(50)]
    assert sum(span is not None for span in spans) == kept
    tracing.shutdown()


def test_a_sampled_caller_is_followed_whatever_the_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parent-based: a caller's sampled traceparent gets a recording span in its trace even at ratio 0."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    tracing = Telemetry(enabled=True, exporter=InMemorySpanExporter())
    span = tracing.server_span("Get", [TRACEPARENT])
    assert span is not None
    assert span.is_recording()
    assert f"{span.get_span_context().trace_id:032x}" == TRACE_ID
    assert tracing.server_span("Get", [UNSAMPLED_TRACEPARENT]) is not None  # followed, and not recording
    assert tracing.server_span("Get", []) is None
    span.end()
    tracing.shutdown()
