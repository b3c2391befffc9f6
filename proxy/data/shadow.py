"""The shadow call: the other backend runs the same operation beside the primary, and the two answers
are compared, each difference recorded as a discrepancy (in the log, on the caller's span, and as a
span of its own that always reaches the exporter).

Shadow work never slows or fails the caller: the caller gets the primary's answer as soon as it is
there. A shadow call still running then finishes in the background (a shadow write keeps the key's
lock until it is done, so the next write of that key waits for it), and shadow calls beyond
MAX_SHADOW_IN_FLIGHT are skipped and counted; a skipped write is left to the replication queue.

A ShadowCall is made only for an operation that has a shadow: it carries what recording a
difference needs (the operation, its key, its route and the router that gave it, the caller's Call)
so that comparing, judging and recording take the answers and nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from proxy.data.backendcall import BackendCalls, Call
from proxy.data.backfill import BackfillRule, Cursor
from proxy.data.compare import Kind, compare_key_sets
from proxy.data.coverage import ShadowCoverage
from proxy.data.discrepancies import Discrepancy, DiscrepancyLog, document_fields, trim
from proxy.data.eager import Finished, start_eagerly
from proxy.data.rules import RuleHits
from proxy.data.triage import Triage, decision_fields, trace_id
from proxy.routing.router import GET, HAS, KEYS, Decision, Op, Router
from proxy.telemetry import tracing as attr

T = TypeVar("T")

#: Shadow calls in flight at once; beyond it a shadow call is skipped (a write's copy is left to the queue).
MAX_SHADOW_IN_FLIGHT = 512
#: How long shutdown waits for shadow calls still running.
SHADOW_DRAIN_S = 5.0

#: Says whether two answers differ, and how: (primary's, shadow's) -> None when they agree.
Judge = Callable[[Any, Any], Kind | None]
#: An answer as a discrepancy shows it (None: nothing to show).
Show = Callable[[Any], str | None]


@dataclass
class ShadowCounters:
    calls: int = 0
    failures: int = 0
    skipped: int = 0
    in_flight: int = 0
    keys_not_compared: int = 0
    pending_not_compared: int = 0  # key reads not compared: the key's copy to the shadow was pending
    # Live objects, shared by a snapshot's shallow copy (read, never written, by the admin side).
    rule_hits: RuleHits = field(default_factory=RuleHits)  # differences each comparison rule excused
    coverage: ShadowCoverage = field(default_factory=ShadowCoverage)  # distinct keys compared, by prefix


class ShadowLane:
    """Where a dispatcher's shadow calls run: the bound on those in flight, their counters, the
    discrepancy log, and the background work (late comparisons, shadow writes) still running."""

    def __init__(self, calls: BackendCalls, discrepancies: DiscrepancyLog, backfill: BackfillRule | None = None,
                 triage: Triage | None = None) -> None:
        self.calls = calls
        self.discrepancies = discrepancies
        #: Which missing keys are the backfill not done yet (None: every difference is a discrepancy).
        self.backfill = backfill
        #: What a record adds for triage (None: the decision and trace alone).
        self.triage = triage
        self.telemetry = calls.telemetry
        self.counters = ShadowCounters()
        self.covered = self.counters.coverage.compared  # bound once: it runs on every shadow read
        self._call = calls.call
        self._background: set[asyncio.Task[Any]] = set()

    def start(self, op: Op, key: str, decision: Decision, router: Router, call: Call,
              run: Coroutine[Any, Any, T]) -> ShadowCall[T] | None:
        """Start `run`, the operation on decision.secondary (not started yet), unless too many shadow
        calls are in flight already: then it is skipped and counted, and None says so."""
        counters = self.counters
        if counters.in_flight >= MAX_SHADOW_IN_FLIGHT:
            counters.skipped += 1
            run.close()  # never started: closing it spares the "never awaited" warning
            return None
        counters.calls += 1
        secondary = decision.secondary
        # The span starts now: the task may first run after the caller's span has ended.
        span = None if call.span is None else self.calls.span(secondary, op, call)
        # How far the backfill was before the shadow call is issued: an absence it then finds is lag
        # only for a key not reached yet. Asked later, when the comparison is judged, a cursor that
        # moved past the key meanwhile (a slow shadow read) would call that lag a discrepancy.
        backfill = self.backfill
        cursor = None if backfill is None else backfill.cursor()
        # Eagerly: a store that answers without waiting is done before the primary starts, so the
        # comparison and a write's settling happen in line, with no Task and no held key lock.
        outcome = start_eagerly(self._call(secondary, op, run, call, span))
        if isinstance(outcome, Finished):
            # Done already (never in flight, as nothing ran meanwhile): a callback would cost a turn.
            if outcome.error is not None:
                counters.failures += 1
        else:
            counters.in_flight += 1
            outcome.add_done_callback(self._done)
        return ShadowCall(self, op, key, decision, router, call, outcome, cursor)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self.counters.in_flight -= 1
        if task.cancelled() or task.exception() is not None:
            self.counters.failures += 1

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a reference to background work until it is done (the loop keeps only weak ones)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout: float = SHADOW_DRAIN_S) -> None:
        """Let background work still running finish, at most timeout seconds."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)


class ShadowCall(Generic[T]):
    """One operation's shadow call: what it is of, and its outcome, at once when it never waited
    (see proxy.data.eager), else its Task."""

    __slots__ = ("call", "cursor", "decision", "key", "lane", "op", "outcome", "router")

    def __init__(self, lane: ShadowLane, op: Op, key: str, decision: Decision, router: Router, call: Call,
                 outcome: Finished[T] | asyncio.Task[T], cursor: Cursor | None = None) -> None:
        self.lane = lane
        self.cursor = cursor  # the backfill's, as the shadow call was issued
        self.op = op
        self.key = key
        self.decision = decision
        self.router = router
        self.call = call
        self.outcome = outcome

    def running(self) -> asyncio.Task[T] | None:
        """The shadow call's Task while it still runs; None once it has an outcome."""
        outcome = self.outcome
        if isinstance(outcome, Finished) or outcome.done():
            return None
        return outcome

    def succeeded(self) -> bool:
        """Whether the finished shadow call returned."""
        outcome = self.outcome
        if isinstance(outcome, Finished):
            return outcome.error is None  # what cancelled() and exception() would say, in one look
        return not outcome.cancelled() and outcome.exception() is None

    def compare(self, primary: Any, judge: Judge, show: Show) -> None:
        """Compare now if the shadow has answered, else when it does; the caller never waits."""
        outcome = self.outcome
        if isinstance(outcome, Finished) or outcome.done():
            self.judge(primary, judge, show)
            return

        async def later() -> None:
            await asyncio.wait([outcome])
            self.judge(primary, judge, show)

        self.lane.keep(asyncio.create_task(later()))

    def judge(self, primary: Any, judge: Judge, show: Show) -> None:
        """Count the comparison, and record a discrepancy if the finished shadow differs or failed."""
        self.lane.discrepancies.compared(self.op)
        if self.op is GET or self.op is HAS:  # reads compare what is stored; a Set's shadow only writes
            self.lane.covered(self.key)
        outcome = self.outcome
        detail = ""
        answer: Any = None
        if outcome.cancelled() or outcome.exception() is not None:
            kind = Kind.SHADOW_ERROR
            detail = "cancelled" if outcome.cancelled() else str(outcome.exception())
        else:
            answer = outcome.result()
            judged = judge(primary, answer)
            if judged is None:
                return  # the usual outcome: nothing to show, so nothing is rendered
            if judged is Kind.VALUE_MISMATCH and self.router.flags.comparison_rules:
                # Only once the documents differ: an agreeing comparison never looks at a rule.
                applied = self.lane.counters.rule_hits.apply(self.router.flags, self.key, primary, answer)
                if applied is not None:
                    if applied.excused:
                        return
                    detail = applied.note()
            kind = judged
            backfill = self.lane.backfill
            if kind is Kind.MISSING_IN_SHADOW and backfill is not None and backfill.not_migrated(
                    self.op, self.key, self.decision, primary, answer, self.cursor):
                self.lane.discrepancies.not_migrated(self.op)  # counted apart, not compared, not logged
                return
            if self.op is KEYS:
                diff = compare_key_sets(primary, answer)
                detail = (f"missing in shadow: {diff.missing} {list(diff.missing_sample)}; "
                          f"extra in shadow: {diff.extra} {list(diff.extra_sample)}")
        if show is show_value:
            # Stored documents: the record holds them only when the config asks (contract §5).
            fields = document_fields(primary, answer, self.lane.discrepancies.record_values)
        else:
            fields = {"primary": trim(show(primary)), "shadow": None if answer is None else trim(show(answer))}
        self.record(kind, detail, fields)

    def record(self, kind: Kind, detail: str, fields: dict[str, Any]) -> None:
        """One discrepancy (`fields`: what it says of each side): into the log, onto the caller's span,
        and as a span that is always exported."""
        lane, op, key, decision = self.lane, self.op, self.key, self.decision
        revision = self.router.flags.revision
        lane.discrepancies.record(Discrepancy(time=time.time(), op=op.value, key=key, kind=kind.value,
                                              route=decision.primary.value, revision=revision, detail=detail,
                                              **fields, **self.triage_fields()))
        attributes: dict[str, Any] = {
            attr.DISCREPANCY: True, attr.DISCREPANCY_KIND: kind.value, attr.ROUTE: decision.primary.value,
            attr.ROUTE_REASON: decision.reason.value, attr.SHADOW: True, attr.FLAGS_REVISION: revision,
            "turnout.op": op.value,
        }
        if lane.telemetry.record_keys:
            attributes[attr.KEY] = key
        span = self.call.span
        if span is not None and span.is_recording():
            span.set_attribute(attr.DISCREPANCY, True)
            span.set_attribute(attr.DISCREPANCY_KIND, kind.value)
        lane.telemetry.discrepancy(span, attributes)

    def triage_fields(self) -> dict[str, Any]:
        """The record's triage fields: the rest of the decision, the trace id, the key's recent writes."""
        triage = self.lane.triage
        if triage is not None:
            return triage.fields(self.key, self.decision, self.router, self.call.span)
        return {**decision_fields(self.key, self.decision, self.router), "trace_id": trace_id(self.call.span)}


def show_value(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="replace")


def show_presence(found: Any) -> str | None:
    return "present" if found else None


def no_difference(primary: Any, shadow: Any) -> Kind | None:
    return None  # a Set has no answer to compare; only a failing shadow counts
