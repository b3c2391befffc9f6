"""/metrics: the proxy's figures as Prometheus families, read from the data plane and the flag
watcher at scrape time.

The hot path only bumps plain counters (proxy.telemetry.metrics.Metrics); a collector turns them
into families when Prometheus asks, so a scrape costs the scraper, never a caller. Under
`turnout serve --workers N`, worker 0's page holds every worker's families (proxy.workers.relay).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from proxy.admin.state import AdminState
from proxy.data.plane import Snapshot
from proxy.data.rules import RuleHits
from proxy.migration.checksum import Summary, summarize
from proxy.routing.flags import Flags
from proxy.routing.watcher import FlagWatcher
from proxy.safety.wilson import wilson
from proxy.safety.window import WindowFigures
from proxy.telemetry.metrics import Metrics
from proxy.workers.relay import merged_metrics

#: (automatic, trigger) of every kind of rollback: an operator's, an aborted canary, a cutover undoing
#: itself, and each rollback trigger.
ROLLBACK_KINDS = ((False, "operator"), (False, "canary_abort"), (True, "cutover"), (True, "error_rate"),
                  (True, "latency_increase"), (True, "discrepancy_rate"))
#: The latency quantiles each backend's summary shows, as fractions and as their `quantile` label.
QUANTILES = (0.5, 0.95, 0.99)


class ProxyCollector(Collector):
    """The families of one proxy process; without open backends, only the flag families."""

    def __init__(self, state: AdminState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        yield from flag_families(self._state.watcher)
        plane = self._state.plane
        if plane is not None:
            snapshot = plane.snapshot()
            yield from plane_families(snapshot)
            flags = self._state.watcher.router.flags
            if flags.comparison_rules:
                yield comparison_rule_family(flags, snapshot.shadow.rule_hits)
        yield from safety_families(self._state)


class Families(Collector):
    """Families already collected, for a page put together per scrape (records, other workers)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = tuple(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def proxy_registry(state: AdminState) -> CollectorRegistry:
    """A registry of the proxy's own: the process-wide default one would mix in whatever else the
    process (or a test beside it) registers."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(state))
    return registry


async def metrics_page(state: AdminState, registry: CollectorRegistry, with_records: bool = False) -> bytes:
    """The /metrics page: this process's families, each backend's records and checksum when asked
    (a scan of both stores), and on worker 0 every other worker's families labelled by worker."""
    others = state.other_pages()
    plane = state.plane
    if not others and not (with_records and plane is not None):
        return generate_latest(registry)
    families = list(registry.collect())
    if with_records and plane is not None:
        # The backends are shared by all workers: counted once, by the worker asked.
        families.extend(record_families({route.value: await summarize(backend)
                                         for route, backend in plane.backends().items()}))
    if others:
        families = await merged_metrics(state.worker, families, others, state.admin_token)
    return generate_latest(Families(families))


def flag_families(watcher: FlagWatcher) -> Iterator[Metric]:
    reload = watcher.status()
    yield _gauge("turnout_flags_info", "The flag revision in force.", [({"revision": reload.revision}, 1)])
    yield _counter("turnout_flags_reload_failures_total", "Flag files refused.", [({}, reload.failures)])
    override = watcher.override
    yield _gauge("turnout_override_active", "1 while an operator override routes everything to one backend.",
                 [({"route": override.route.value if override else ""}, 1 if override else 0)])


def plane_families(snapshot: Snapshot) -> Iterator[Metric]:
    metrics = snapshot.metrics
    yield _counter("turnout_operations_total", "Operations by operation and route.",
                   [({"op": op, "route": route}, n) for (op, route), n in sorted(metrics.operations.items())])
    report = snapshot.discrepancies
    yield _counter("turnout_shadow_compared_total", "Operations compared in shadow mode.",
                   [({"op": op}, n) for op, n in sorted(report.compared.items())])
    yield _counter("turnout_shadow_not_migrated_total",
                   "Shadow comparisons of keys the backfill had not reached yet (not discrepancies).",
                   # Each op the rule explains, from 0: a series that exists before the backfill's first key.
                   [({"op": op}, report.not_migrated.get(op, 0))
                    for op in sorted({"get", "has", "delete", *report.not_migrated})])
    yield _counter("turnout_discrepancies_total", "Discrepancies by kind.",
                   [({"kind": kind}, n) for kind, n in sorted(report.by_kind.items())])
    yield _counter("turnout_discrepancies_by_op_total", "Discrepancies by operation.",
                   [({"op": op}, n) for op, n in sorted(report.by_op.items())])
    yield _gauge("turnout_discrepancy_rate", "Discrepancies over compared operations.", [({}, report.rate)])
    interval = wilson(report.total, sum(report.compared.values()))
    yield _gauge("turnout_discrepancy_rate_bound", "The 95 % Wilson interval of turnout_discrepancy_rate.",
                 [({"bound": "low"}, interval.low), ({"bound": "high"}, interval.high)])
    yield _counter("turnout_shadow_skipped_total", "Shadow calls skipped over the in-flight bound.",
                   [({}, snapshot.shadow.skipped)])
    yield _counter("turnout_discrepancy_log_dropped_total", "Discrepancies the log could not write.",
                   [({}, snapshot.dropped_discrepancies)])
    yield latency_family(metrics)
    yield _counter("turnout_backend_errors_total", "Failed backend calls by backend and operation.",
                   [({"backend": b, "op": o}, n) for (b, o), n in sorted(metrics.errors.items())])
    yield _gauge("turnout_backend_healthy", "1 when the backend's last call succeeded.",
                 [({"backend": b.name}, 1 if b.healthy else 0) for b in snapshot.backends])
    stats = snapshot.replication
    yield _gauge("turnout_replication_queue_depth", "Writes waiting to reach the other backend.",
                 [({}, stats.depth)])
    yield _gauge("turnout_replication_oldest_age_seconds", "Age of the oldest waiting write.",
                 [({}, stats.oldest_age_s)])
    yield _counter("turnout_replication_replayed_total", "Writes copied by the replayer.", [({}, stats.replayed)])
    yield _counter("turnout_replication_failures_total", "Failed replay attempts.", [({}, stats.failures)])


def comparison_rule_family(flags: Flags, hits: RuleHits) -> Metric:
    """Each comparison rule's hits: differences it turned into agreements. `rule` is its place in the
    file's list; an expired rule stays at its last count (status says it has expired)."""
    return _counter("turnout_comparison_rule_hits_total", "Differences each comparison rule excused.",
                    [({"rule": str(i), "owner": rule.owner}, hits.of(rule))
                     for i, rule in enumerate(flags.comparison_rules)])


def safety_families(state: AdminState) -> Iterator[Metric]:
    """Rollbacks, the override's kind, the canary and the health window the guard judged (the guard
    runs in a lone process or worker 0, so only that page has the window's families)."""
    # Every kind from zero, so that a first rollback is an increase Prometheus' rate() sees.
    counts = {kind: 0 for kind in ROLLBACK_KINDS} | dict(state.rollbacks)
    yield _counter("turnout_rollbacks_total", "Rollbacks since the proxy started, by kind and trigger.",
                   [({"automatic": str(automatic).lower(), "trigger": trigger}, n)
                    for (automatic, trigger), n in sorted(counts.items())])
    override = state.watcher.override
    yield _gauge("turnout_override_automatic", "1 while an automatic rollback holds everything on old.",
                 [({"trigger": override.trigger.name if override and override.trigger else ""},
                   1 if override is not None and override.automatic else 0)])
    guard = state.guard
    if guard is None:
        return
    canary = guard.canary
    if canary is not None and state.watcher.file_flags.canary is not None:
        yield _gauge("turnout_canary_step", "The canary's current step (index into canary.steps).",
                     [({"state": canary.phase.value}, canary.step)])
        yield _gauge("turnout_canary_percentage", "The read and write percentage of the canary's step.",
                     [({}, canary.percentage)])
    last = guard.last
    figures = last.figures if last is not None else WindowFigures(start=0.0, end=0.0)
    # Both backends always, at zero before they have calls, so a dashboard's series never start missing.
    backends = [(name, figures.of(name)) for name in ("new", "old")]
    yield _gauge("turnout_window_calls", "Calls per backend in the health window.",
                 [({"backend": b}, f.calls) for b, f in backends])
    yield _gauge("turnout_window_error_rate", "Share of each backend's calls that failed in the health window.",
                 [({"backend": b}, f.error_rate) for b, f in backends])
    yield _gauge("turnout_window_latency_seconds", "Backend call latency quantiles over the health window.",
                 [({"backend": b, "quantile": q}, v) for b, f in backends
                  for q, v in (("0.5", f.p50), ("0.95", f.p95), ("0.99", f.p99))])
    interval = figures.discrepancy_interval
    yield _gauge("turnout_window_discrepancy_rate", "Discrepancies over compared operations in the health "
                 "window, with the bounds of its 95 % Wilson interval.",
                 [({"bound": "point"}, figures.discrepancy_rate), ({"bound": "low"}, interval.low),
                  ({"bound": "high"}, interval.high)])
    yield _gauge("turnout_window_compared", "Operations compared in the health window.", [({}, figures.compared)])
    yield _gauge("turnout_window_conclusive", "1 when new had at least min_calls calls in the health window.",
                 [({}, 1 if last is not None and last.evaluation.conclusive else 0)])


def latency_family(metrics: Metrics) -> Metric:
    """Each backend's call latency by operation: quantiles read from the buckets, with _sum and _count."""
    family = SummaryMetricFamily("turnout_backend_latency_seconds", "Backend call latency by backend and operation.",
                                 labels=("backend", "op"))
    latency = sorted(metrics.latency.items())
    # The quantile samples by hand: SummaryMetricFamily.add_metric takes only a count and a sum.
    for (backend, op), histogram in latency:
        for q in QUANTILES:
            family.add_sample(family.name, {"backend": backend, "op": op, "quantile": str(q)}, histogram.quantile(q))
    for (backend, op), histogram in latency:
        family.add_metric((backend, op), count_value=histogram.count, sum_value=histogram.total)
    return family


def record_families(summaries: Mapping[str, Summary]) -> list[Metric]:
    """Each backend's record count and content checksum (the stores agree when both are equal)."""
    return [
        _gauge("turnout_backend_records", "Records each backend holds (on request).",
               [({"backend": name}, s.records) for name, s in summaries.items()]),
        _gauge("turnout_backend_checksum_info", "Content checksum of each backend (on request).",
               [({"backend": name, "checksum": s.checksum}, 1) for name, s in summaries.items()]),
    ]


Samples = Iterable[tuple[dict[str, str], float]]


def _gauge(name: str, help_text: str, samples: Samples) -> Metric:
    family = GaugeMetricFamily(name, help_text)
    for labels, value in samples:
        family.add_sample(name, labels, value)
    return family


def _counter(name: str, help_text: str, samples: Samples) -> Metric:
    # CounterMetricFamily keeps the name without `_total` and puts the suffix back on each sample and
    # on the rendered HELP and TYPE lines, so the page shows the name as given here.
    family = CounterMetricFamily(name, help_text)
    for labels, value in samples:
        family.add_sample(f"{family.name}_total", labels, value)
    return family
