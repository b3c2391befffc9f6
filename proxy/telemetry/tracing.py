"""Spans (contract §4), set up once from the standard OTEL_* variables; the attribute names live here.

Tracing is on when an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or OTEL_TRACES_EXPORTER=otlp, and off when OTEL_SDK_DISABLED=true
or OTEL_TRACES_EXPORTER=none. When it is off, no span machinery runs at all. Sampling follows
OTEL_TRACES_SAMPLER; the protocol follows OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / _PROTOCOL (grpc or
http/protobuf). Spans leave through a batch processor on its own thread, so a collector that is
down or slow never slows or fails a call: what its bounded queue cannot hold is dropped.

A discrepancy must reach the exporter whatever the sampling: it is also emitted as its own span,
`turnout.discrepancy`, by a tracer that samples everything, in the request's trace.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

log = logging.getLogger(__name__)

# The contract's attribute names (§4), in one place.
ROUTE = "turnout.route"
ROUTE_REASON = "turnout.route.reason"
SHADOW = "turnout.shadow"
DISCREPANCY = "turnout.discrepancy"
DISCREPANCY_KIND = "turnout.discrepancy.kind"
FLAGS_REVISION = "turnout.flags.revision"
BACKEND = "turnout.backend"
BACKEND_TYPE = "turnout.backend.type"
KEY = "turnout.key"  # only with telemetry.record_keys: true
# A rollback's own span, `turnout.rollback` (operator or automatic), always exported.
ROLLBACK_SPAN = "turnout.rollback"
ROLLBACK_REASON = "turnout.rollback.reason"
ROLLBACK_OUTCOME = "turnout.rollback.outcome"  # ok or failed
ROLLBACK_AUTOMATIC = "turnout.rollback.automatic"
ROLLBACK_DETAIL = "turnout.rollback.detail"
ROLLBACK_INCIDENT = "turnout.rollback.incident"

SERVICE = "turnout.kv.v1.KeyValue"


def tracing_configured(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").lower()
    if exporters == "none":
        return False
    return bool(exporters in ("otlp", "console") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporter(env: Mapping[str, str]) -> SpanExporter:
    if env.get("OTEL_TRACES_EXPORTER", "").lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    if protocol != "grpc":
        log.warning("OTLP protocol %r is not supported; using grpc", protocol)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter()


class _MetadataGetter:
    """Reads W3C trace context from gRPC invocation metadata."""

    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        values = [v if isinstance(v, str) else v.decode() for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()

#: The samplers that decide a root span by its trace id alone, and so can be decided before a span exists.
_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")


def ratio_sampler(env: Mapping[str, str]) -> TraceIdRatioBased | None:
    """The trace-id ratio that decides root spans under OTEL_TRACES_SAMPLER, when it is a ratio sampler.

    Read as the SDK reads it: a missing or unreadable argument, or one outside 0..1, means 1.0.
    """
    if env.get("OTEL_TRACES_SAMPLER", "").lower() not in _RATIO_SAMPLERS:
        return None
    try:
        rate = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        rate = 1.0
    return TraceIdRatioBased(rate if 0.0 <= rate <= 1.0 else 1.0)


class _PresetTraceIds(RandomIdGenerator):
    """Gives the next root span the trace id turnout drew for it, so the SDK's sampling decision is the
    one already made; every other id is random as usual."""

    def __init__(self) -> None:
        self.preset: int | None = None

    def generate_trace_id(self) -> int:
        preset, self.preset = self.preset, None
        return preset if preset is not None else super().generate_trace_id()


class Telemetry:
    """The tracers of one proxy; `enabled` False means every method is a cheap no-op."""

    def __init__(self, enabled: bool, record_keys: bool = False, exporter: SpanExporter | None = None) -> None:
        self.enabled = enabled
        self.record_keys = record_keys
        #: Whether a call may get a span at all: False lets the hot path skip server_span's call.
        self.traces_calls = False
        self._providers: list[TracerProvider] = []
        if not enabled:
            return
        env = os.environ
        resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "turnout")})
        processor = BatchSpanProcessor(exporter or _exporter(env))
        # Under a ratio sampler, a call with no traceparent is decided by a trace id drawn here: a call
        # left out gets no span at all (the SDK would build, sample and end a non-recording one), and a
        # call kept gets a span with that very trace id, so the decision is the SDK's own.
        self._root_ratio = ratio_sampler(env)
        self._ids = _PresetTraceIds()
        sampler: Sampler | None = None if self._root_ratio is None else (
            ParentBased(self._root_ratio) if env["OTEL_TRACES_SAMPLER"].lower().startswith("parentbased")
            else self._root_ratio)
        # Without a sampler of ours, the SDK reads OTEL_TRACES_SAMPLER itself.
        provider = TracerProvider(resource=resource, sampler=sampler, id_generator=self._ids)
        provider.add_span_processor(processor)
        always = TracerProvider(resource=resource, sampler=ALWAYS_ON)
        always.add_span_processor(processor)
        self._providers = [provider, always]
        self.tracer = provider.get_tracer("turnout")
        self._always = always.get_tracer("turnout")
        # With sampling off, calls get no span at all (discrepancy spans are still exported).
        self._calls_traced = env.get("OTEL_TRACES_SAMPLER", "").lower() != "always_off"
        self.traces_calls = self._calls_traced

    @classmethod
    def from_env(cls, record_keys: bool = False) -> Telemetry:
        return cls(tracing_configured(), record_keys)

    def server_span(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> trace.Span | None:
        """The span of one call, continuing the caller's traceparent; None when tracing is off."""
        if not self.enabled or not self._calls_traced:
            return None
        carrier = list(metadata or ())
        # Parsing trace context costs; most calls from untraced callers carry none.
        if any(k == "traceparent" for k, _ in carrier):
            parent = extract(carrier, getter=_GETTER)  # type: ignore[arg-type]
        else:
            parent = None
            if self._root_ratio is not None:
                trace_id = self._ids.generate_trace_id()
                if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT >= self._root_ratio.bound:
                    return None  # not sampled: the same test TraceIdRatioBased makes, made without a span
                self._ids.preset = trace_id
        try:
            return self.tracer.start_span(f"{SERVICE}/{method}", context=parent, kind=trace.SpanKind.SERVER)
        finally:
            self._ids.preset = None  # never left for a later span

    def backend_span(self, parent: trace.Span | None, op: str, backend: str, backend_type: str) -> trace.Span | None:
        if parent is None or not parent.is_recording():
            return None
        return self.tracer.start_span(
            f"{backend}.{op}", context=trace.set_span_in_context(parent), kind=trace.SpanKind.CLIENT,
            attributes={BACKEND: backend, BACKEND_TYPE: backend_type},
        )

    def discrepancy(self, parent: trace.Span | None, attributes: dict[str, Any]) -> None:
        """Emit a discrepancy span in the request's trace, sampled or not."""
        if not self.enabled:
            return
        ctx = trace.set_span_in_context(parent) if parent is not None else otel_context.Context()
        span = self._always.start_span("turnout.discrepancy", context=ctx, attributes=attributes)
        span.end()

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        """An operator event (override, write pause) as a span of its own, always exported."""
        if self.enabled:
            self._always.start_span(name, attributes=attributes).end()

    def rollback(self, reason: str, ok: bool, automatic: bool, detail: str = "", incident: str = "") -> None:
        """A rollback as a span of its own, always exported; its status is an error when it failed."""
        if not self.enabled:
            return
        span = self._always.start_span(ROLLBACK_SPAN, attributes={
            ROLLBACK_REASON: reason, ROLLBACK_OUTCOME: "ok" if ok else "failed", ROLLBACK_AUTOMATIC: automatic,
            ROLLBACK_DETAIL: detail, ROLLBACK_INCIDENT: incident,
        })
        if not ok:
            span.set_status(trace.Status(trace.StatusCode.ERROR, detail or "rollback failed"))
        span.end()

    def shutdown(self, timeout: float = 2.0) -> None:
        """Flush what is queued, but never hold up shutdown for a collector that does not answer."""

        def flush() -> None:
            for provider in self._providers:
                provider.shutdown()

        if self._providers:
            worker = threading.Thread(target=flush, name="telemetry-shutdown", daemon=True)
            worker.start()
            worker.join(timeout)
