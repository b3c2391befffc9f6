"""The shadow call on its own: the in-flight bound, and what a difference records."""

from __future__ import annotations

from pathlib import Path

from proxy.backends.memory import MemoryBackend
from proxy.data.backendcall import BackendCalls, Call
from proxy.data.compare import compare_values
from proxy.data.discrepancies import DiscrepancyLog
from proxy.data.shadow import MAX_SHADOW_IN_FLIGHT, ShadowLane, show_value
from proxy.routing.flags import Flags
from proxy.routing.router import Op, Route, Router
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.tracing import Telemetry


def lane(tmp_path: Path) -> tuple[ShadowLane, MemoryBackend]:
    new = MemoryBackend()
    calls = BackendCalls({Route.OLD: MemoryBackend(), Route.NEW: new}, Metrics(), Telemetry(enabled=False))
    return ShadowLane(calls, DiscrepancyLog(tmp_path)), new


async def test_a_shadow_call_beyond_the_bound_is_skipped_and_counted(tmp_path: Path) -> None:
    """With MAX_SHADOW_IN_FLIGHT running, a new shadow call never starts: None, and one more skipped."""
    shadows, new = lane(tmp_path)
    shadows.counters.in_flight = MAX_SHADOW_IN_FLIGHT
    router = Router(Flags(use_new_storage=True, shadow_mode_enabled=True))
    decision = router.route(Op.GET, "k")
    assert shadows.start(Op.GET, "k", decision, router, Call(), new.get("k")) is None
    assert (shadows.counters.skipped, shadows.counters.calls) == (1, 0)


async def test_a_difference_is_recorded_with_the_operation_and_its_route(tmp_path: Path) -> None:
    """A shadow that answers otherwise than the primary leaves a discrepancy naming op, key and route."""
    shadows, new = lane(tmp_path)
    await new.set("k", b'"shadow"')
    router = Router(Flags(use_new_storage=True, shadow_mode_enabled=True, revision="r1"))
    decision = router.route(Op.GET, "k")
    shadow = shadows.start(Op.GET, "k", decision, router, Call(), new.get("k"))
    assert shadow is not None
    shadow.compare(b'"primary"', compare_values, show_value)
    await shadows.drain()
    report = shadows.discrepancies.report
    assert report.compared["get"] == 1
    assert report.by_kind["value_mismatch"] == report.total == 1
    latest = report.latest[-1]
    assert (latest.op, latest.key, latest.route, latest.revision) == ("get", "k", "old", "r1")
