"""Executes a Decision: the primary call, the shadow call and its comparison, the replication intent.

It is the only place that knows two backends exist. For a write it takes the key's lock, records
the replication intent durably, then writes the primary; in shadow mode it writes the other backend
beside it and settles the intent once that succeeded, otherwise the replayer copies the key later.
For a read in shadow mode the other backend answers beside the primary and the answers are compared.

Its parts, each a module of its own: a backend call, timed and traced (proxy.data.backendcall); how
a read's route follows a key's pending copy (proxy.data.pending); the shadow call, its comparison and
the discrepancies it records (proxy.data.shadow); the Keys listing with its pending keys merged in
(proxy.data.listing). What stays here is the route of each call and the write path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from functools import partial
from typing import Any, Protocol, TypeVar

from proxy.backends.base import Backend, Key, Value
from proxy.data.backendcall import BackendCalls, Call
from proxy.data.backfill import BackfillRule
from proxy.data.compare import compare_presence, compare_values
from proxy.data.discrepancies import DiscrepancyLog
from proxy.data.eager import Finished
from proxy.data.keylocks import KeyLocks
from proxy.data.listing import KeyListing
from proxy.data.pending import ASK_STORE, follow, follows_pending, pending_copies
from proxy.data.shadow import Judge, ShadowCall, ShadowLane, Show, no_difference, show_presence, show_value
from proxy.data.triage import Triage
from proxy.data.writegate import WriteGate
from proxy.errors import ReadOnly
from proxy.replication.queue import IntentQueue
from proxy.routing.router import DELETE, GET, HAS, SET, Decision, Op, Route, Router
from proxy.telemetry import tracing as attr
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.tracing import Telemetry

__all__ = ["Call", "Dispatcher", "RouterSource"]  # Call: what a caller hands every operation

log = logging.getLogger(__name__)

T = TypeVar("T")


class RouterSource(Protocol):
    """Whatever holds the router in force (the flag watcher); read once per operation."""

    @property
    def router(self) -> Router: ...


class Dispatcher:
    def __init__(
        self,
        backends: Mapping[Route, Backend],
        routes: RouterSource,
        queue: IntentQueue,
        locks: KeyLocks,
        discrepancies: DiscrepancyLog,
        metrics: Metrics | None = None,
        telemetry: Telemetry | None = None,
        gate: WriteGate | None = None,
        backfill: BackfillRule | None = None,
    ) -> None:
        self.backends = backends
        self.routes = routes
        self.queue = queue
        self.locks = locks
        self.discrepancies = discrepancies
        self.metrics = metrics or Metrics()
        self.telemetry = telemetry or Telemetry(enabled=False)
        calls = BackendCalls(backends, self.metrics, self.telemetry)
        self.health = calls.health
        self._call = calls.call
        #: Which missing keys are the backfill not done yet. The flag watcher knows state_dir (the
        #: checkpoint, the touched table the workers share); a bare router source (a bench) has none,
        #: and then nothing is explained, though writes are still marked (their cost is measured).
        self.backfill = backfill or BackfillRule(getattr(routes, "state_dir", None), backends)
        self.triage = Triage(queue)
        self._shadows = ShadowLane(calls, discrepancies, self.backfill, self.triage)
        self.shadow = self._shadows.counters
        #: Chosen once, with the queue's form: no test of the form on the path of a call.
        self._pending = pending_copies(queue)
        self._listing = KeyListing(calls, self._pending, self._shadows)
        #: An operator's write pause (the cutover window), above the flag file.
        self.gate = gate or WriteGate(self.telemetry.event)

    def _note(self, op: Op, key: str, decision: Decision, router: Router, call: Call) -> None:
        """Count the operation by its route, and put the route on the caller's span."""
        self.metrics.operation(op, decision.primary)  # StrEnum members are their own str values
        if call.span is not None:
            self._trace_route(key, decision, router, call.span)

    def _trace_route(self, key: str, decision: Decision, router: Router, span: Any) -> None:
        if span.is_recording():
            span.set_attribute(attr.ROUTE, decision.primary.value)
            span.set_attribute(attr.ROUTE_REASON, decision.reason.value)
            span.set_attribute(attr.SHADOW, decision.compare)
            span.set_attribute(attr.FLAGS_REVISION, router.flags.revision)
            if self.telemetry.record_keys:
                span.set_attribute(attr.KEY, key)

    # -- reads ---------------------------------------------------------------------------------

    # get, has, set and delete hand back the coroutine of the shared path rather than awaiting it in a
    # coroutine of their own: one frame less on every call.

    def get(self, key: Key, call: Call) -> Coroutine[Any, Any, Value | None]:
        return self._read(GET, key, call, compare_values, show_value)

    def has(self, key: Key, call: Call) -> Coroutine[Any, Any, bool]:
        return self._read(HAS, key, call, compare_presence, show_presence)

    async def _read(self, op: Op, key: Key, call: Call, judge: Judge, show: Show) -> Any:
        """A Get or Has: its route (following the key's pending copy), the shadow beside it, the answer."""
        router = self.routes.router
        decision = router.route(op, key, call.caller)
        if decision.replicate and follows_pending(decision):  # not under the kill switch: one test, no call
            intent = self._pending.for_read(key)
            if intent is ASK_STORE:
                intent = await self._pending.stored_for_read(key, decision, router, call.caller)
            if intent is not None:
                decision = follow(decision, intent, self.shadow, call.span)
        self.metrics.operations[op, decision.primary] += 1  # _note, in line
        if call.span is not None:
            self._trace_route(key, decision, router, call.span)
        shadow = None
        if decision.compare:
            secondary = self.backends[decision.secondary]
            work = secondary.get(key) if op is GET else secondary.has(key)
            shadow = self._shadows.start(op, key, decision, router, call, work)
        primary = self.backends[decision.primary]
        answer = await self._call(decision.primary, op, primary.get(key) if op is GET else primary.has(key), call)
        if shadow is not None:
            shadow.compare(answer, judge, show)
        return answer

    async def keys(self, prefix: str, call: Call) -> AsyncIterator[list[Key]]:
        router = self.routes.router
        decision = router.route(Op.KEYS, prefix, call.caller)
        self._note(Op.KEYS, prefix, decision, router, call)
        async for page in self._listing.pages(prefix, call, decision, router):
            yield page

    # -- writes --------------------------------------------------------------------------------

    def set(self, key: Key, value: Value, call: Call) -> Coroutine[Any, Any, None]:
        return self._write(SET, key, value, call)

    def delete(self, key: Key, call: Call) -> Coroutine[Any, Any, bool]:
        return self._write(DELETE, key, None, call)

    async def _write(self, op: Op, key: Key, value: Value | None, call: Call) -> Any:
        """A Set (value) or Delete (None): its route, the key's turn, its replication intent, the
        shadow write beside it, the answer."""
        router = self.routes.router
        if router.flags.read_only:
            revision = router.flags.revision
            raise ReadOnly(f"writes are paused: the flag file says read_only: true (revision {revision!r})")
        if self.gate.paused is not None:
            self.gate.check()
        decision = router.route(op, key, call.caller)
        self.metrics.operations[op, decision.primary] += 1  # _note, in line
        if call.span is not None:
            self._trace_route(key, decision, router, call.span)
        queue = self.queue
        # None: taken free, and given back with locks.release (no release function made for it).
        release = None if self.locks.take_free(key) else await self.locks.acquire(key)
        handed_off = False
        recording = decision.replicate
        try:
            if not recording:
                # Under the kill switch a write stays on old, unless an earlier write of this key is
                # still on its way between the stores: then its direction must follow this write.
                intent = self._pending.for_write(key)
                if intent is ASK_STORE:
                    intent = await self._pending.stored(key)
                recording = intent is not None
            if recording:
                source, target = decision.primary, decision.secondary  # StrEnum members are their str values
                # The replayer is woken below only if the shadow write does not settle the intent.
                if not queue.record_at_once(key, source, target, wake=False):
                    await queue.record(key, source, target, wake=False)
                self.backfill.touch(key)  # before the primary write: a read from now on sees it touched
                self.triage.note(key, op, source, target)
            shadow: ShadowCall[Any] | None = None
            if decision.compare:
                secondary = self.backends[decision.secondary]
                work = secondary.delete(key) if value is None else secondary.set(key, value)
                shadow = self._shadows.start(op, key, decision, router, call, work)
            try:
                primary = self.backends[decision.primary]
                work = primary.delete(key) if value is None else primary.set(key, value)
                result = await self._call(decision.primary, op, work, call)
            except BaseException:
                running = None if shadow is None else shadow.running()
                if running is not None:
                    # The primary may not hold what the shadow wrote: the replayer copies its state.
                    self._finish_shadow_write(key, running, release or partial(self.locks.release, key),
                                             settle=False)
                    handed_off = True
                raise
            if shadow is not None:
                judge = compare_presence if op is DELETE else no_difference
                outcome = shadow.outcome
                if judge is no_difference and isinstance(outcome, Finished) and outcome.error is None:
                    # The usual Set in shadow mode, done in line: all judge() would do is count it,
                    # as a Set has no answer to compare, only its success; both stores hold the write.
                    self.discrepancies.compared(op)
                    queue.settle(key)
                    return result
                running = shadow.running()
                if running is not None:
                    shadow.compare(result, judge, show_presence)
                    self._finish_shadow_write(key, running, release or partial(self.locks.release, key),
                                             settle=True)
                    handed_off = True
                else:
                    ok = shadow.succeeded()
                    if ok and judge is no_difference:
                        self.discrepancies.compared(op)  # as above
                    else:
                        shadow.judge(result, judge, show_presence)
                    if ok:
                        queue.settle(key)  # both stores hold this write already
            return result
        finally:
            if not handed_off:
                if release is None:
                    self.locks.release(key)
                else:
                    release()
                if recording:  # nothing recorded, nothing for the replayer (its own intents woke it)
                    queue.wake()  # a no-op once the intent is settled

    def _finish_shadow_write(self, key: Key, shadow: asyncio.Task[Any], release: Callable[[], None],
                             settle: bool) -> None:
        """Keep the key's lock until the shadow write is done; settle the intent if both hold the write."""

        async def finish() -> None:
            try:
                await asyncio.wait([shadow])
                if settle and not shadow.cancelled() and shadow.exception() is None:
                    self.queue.settle(key)
            except Exception as exc:
                log.warning("settling the replication intent of %r failed; the replayer will copy it: %s", key, exc)
            finally:
                release()
                self.queue.wake()

        self._shadows.keep(asyncio.create_task(finish()))

    async def close(self) -> None:
        """Let shadow work still running finish; the replication queue keeps whatever it misses."""
        self.gate.close()
        await self._shadows.drain()
        self.backfill.close()
