"""The families /metrics shows (names as exposed, types, label names), and a reader that gives a page's
families in the same form, parsed with prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Shape = dict[str, tuple[str, frozenset[str]]]

#: Every family of the page while the backends are open: (type, label names).
OPEN: Shape = {
    "turnout_flags_info": ("gauge", frozenset({"revision"})),
    "turnout_flags_reload_failures_total": ("counter", frozenset()),
    "turnout_override_active": ("gauge", frozenset({"route"})),
    "turnout_operations_total": ("counter", frozenset({"op", "route"})),
    "turnout_shadow_compared_total": ("counter", frozenset({"op"})),
    "turnout_shadow_not_migrated_total": ("counter", frozenset({"op"})),
    "turnout_discrepancies_total": ("counter", frozenset({"kind"})),
    "turnout_discrepancies_by_op_total": ("counter", frozenset({"op"})),
    "turnout_discrepancy_rate": ("gauge", frozenset()),
    "turnout_discrepancy_rate_bound": ("gauge", frozenset({"bound"})),
    "turnout_shadow_skipped_total": ("counter", frozenset()),
    "turnout_discrepancy_log_dropped_total": ("counter", frozenset()),
    "turnout_backend_latency_seconds": ("summary", frozenset({"backend", "op"})),
    "turnout_backend_errors_total": ("counter", frozenset({"backend", "op"})),
    "turnout_backend_healthy": ("gauge", frozenset({"backend"})),
    "turnout_replication_queue_depth": ("gauge", frozenset()),
    "turnout_replication_oldest_age_seconds": ("gauge", frozenset()),
    "turnout_replication_replayed_total": ("counter", frozenset()),
    "turnout_replication_failures_total": ("counter", frozenset()),
    "turnout_rollbacks_total": ("counter", frozenset({"automatic", "trigger"})),
    "turnout_override_automatic": ("gauge", frozenset({"trigger"})),
}
#: What the guard's process (a lone proxy, or worker 0) adds once it has judged a window, and with a canary.
GUARD: Shape = {
    "turnout_window_calls": ("gauge", frozenset({"backend"})),
    "turnout_window_error_rate": ("gauge", frozenset({"backend"})),
    "turnout_window_latency_seconds": ("gauge", frozenset({"backend"})),  # and quantile, which shape() sets aside
    "turnout_window_discrepancy_rate": ("gauge", frozenset({"bound"})),
    "turnout_window_compared": ("gauge", frozenset()),
    "turnout_window_conclusive": ("gauge", frozenset()),
}
CANARY: Shape = {
    "turnout_canary_step": ("gauge", frozenset({"state"})),
    "turnout_canary_percentage": ("gauge", frozenset()),
}
#: What a flag file with comparison_rules adds.
RULES: Shape = {"turnout_comparison_rule_hits_total": ("counter", frozenset({"rule", "owner"}))}
#: What `?records=1` adds.
RECORDS: Shape = {
    "turnout_backend_records": ("gauge", frozenset({"backend"})),
    "turnout_backend_checksum_info": ("gauge", frozenset({"backend", "checksum"})),
}
#: While the backends are not open yet: the flag families alone.
STARTING: Shape = {name: OPEN[name] for name in ("turnout_flags_info", "turnout_flags_reload_failures_total",
                                                 "turnout_override_active", "turnout_rollbacks_total",
                                                 "turnout_override_automatic")}
#: What worker 0 adds under `turnout serve --workers N`.
WORKER_UP: Shape = {"turnout_worker_up": ("gauge", frozenset({"worker"}))}


def by_worker(shape: Shape) -> Shape:
    """The same families with the `worker` label on every sample, as worker 0 shows them."""
    return {name: (kind, labels | {"worker"}) for name, (kind, labels) in shape.items()}


def shape(text: str) -> Shape:
    """Each family of a page by its exposed name (a counter's with `_total`): its type and the label
    names its samples carry (a summary's `quantile` aside: its _sum and _count have none). A family
    shown twice, or whose samples carry different label names, fails."""
    families: Shape = {}
    for family in text_string_to_metric_families(text):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert name not in families, f"{name} twice"
        label_sets = {frozenset(sample.labels) - {"quantile"} for sample in family.samples}
        assert len(label_sets) <= 1, f"{name} has samples labelled differently: {label_sets}"
        families[name] = (family.type, next(iter(label_sets), frozenset()))
    return families
