"""Executes a Decision: the primary call, the shadow call and its comparison, the replication intent.

It is the only place that knows two backends exist. For a write it takes the key's lock, records
the replication intent durably, then writes the primary; in shadow mode it writes the other backend
beside it and settles the intent once that succeeded, otherwise the replayer copies the key later.
For a read in shadow mode the other backend answers beside the primary and the answers are compared.

A read must not lose a write because the key's reads moved before its last write was copied: when
a Get or Has is routed to the backend a pending intent is still copying the key *to*, the intent's
source (which holds the key's newest state) answers instead, and nothing is compared (the other side
is known to lag). Not under the kill switch or an operator override: those keep new out of the
answer whatever it holds, and the replayer brings old up to date.

A Keys listing keeps the same promise for every key under its prefix: the keys a pending intent is
still copying to the listing's backend are left out of that backend's pages, and those their
intent's source holds are added once, after the pages (merged into them in order when the backend
lists in order), so each key is listed once, as its last acknowledged write left it. All the keys
pending under the prefix, whichever way their copy goes, are left out of a Keys comparison on both
sides: they are known to lag, so comparing them would only report that lag as discrepancies.

Shadow work never slows or fails the caller: the caller gets the primary's answer as soon as it is
there. A shadow call still running then finishes in the background (a shadow write keeps the key's
lock until it is done, so the next write of that key waits for it), and shadow calls beyond
MAX_SHADOW_IN_FLIGHT are skipped and counted; a skipped write is left to the replication queue.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from opentelemetry import trace

from proxy.backends.base import DEFAULT_PAGE_SIZE, Backend, Key, Value
from proxy.data.compare import Kind, compare_key_sets, compare_presence, compare_values
from proxy.data.discrepancies import Discrepancy, DiscrepancyLog, trim
from proxy.data.eager import Finished, start_eagerly
from proxy.data.keylocks import KeyLocks
from proxy.data.writegate import WriteGate
from proxy.errors import BackendUnavailable, ReadOnly
from proxy.replication.queue import Intent, ReplicationQueue
from proxy.routing.router import Decision, Op, Reason, Route, Router
from proxy.telemetry import tracing as attr
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.tracing import Telemetry

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Shadow calls in flight at once; beyond it a shadow call is skipped (a write's copy is left to the queue).
MAX_SHADOW_IN_FLIGHT = 512
#: How long shutdown waits for shadow calls still running.
SHADOW_DRAIN_S = 5.0
#: Span attribute: the read was answered by the backend its key's last write is being copied from.
PENDING_WRITE = "turnout.route.pending_write"
#: Reads of one key, which a pending write of that key can send to the write's backend.
_KEY_READS = frozenset({Op.GET, Op.HAS})
#: A Keys listing larger than this is not compared (holding both sides would cost too much memory).
MAX_COMPARED_KEYS = 100_000
#: Presence checks a Keys listing makes at once on the source of its keys' pending writes.
PRESENCE_CONCURRENCY = 32

#: A shadow call's outcome: at once when it never waited (see proxy.data.eager), else its Task.
Shadow = Finished[T] | asyncio.Task[T]


class RouterSource(Protocol):
    """Whatever holds the router in force (the flag watcher); read once per operation."""

    @property
    def router(self) -> Router: ...


@dataclass(slots=True)
class Call:
    """One caller's operation as it passes through: who asked, and its span when traced."""

    caller: str | None = None
    span: trace.Span | None = None


@dataclass
class BackendHealth:
    """What the proxy has seen of one backend's calls, for `turnout status` and health checks."""

    calls: int = 0
    errors: int = 0
    last_error: str = ""
    consecutive_errors: int = 0

    @property
    def healthy(self) -> bool:
        return self.consecutive_errors == 0


@dataclass
class ShadowCounters:
    calls: int = 0
    failures: int = 0
    skipped: int = 0
    in_flight: int = 0
    keys_not_compared: int = 0
    pending_not_compared: int = 0  # key reads not compared: the key's copy to the shadow was pending


class Dispatcher:
    def __init__(
        self,
        backends: Mapping[Route, Backend],
        routes: RouterSource,
        queue: ReplicationQueue,
        locks: KeyLocks,
        discrepancies: DiscrepancyLog,
        metrics: Metrics | None = None,
        telemetry: Telemetry | None = None,
        gate: WriteGate | None = None,
    ) -> None:
        self.backends = backends
        self.routes = routes
        self.queue = queue
        self.locks = locks
        self.discrepancies = discrepancies
        self.metrics = metrics or Metrics()
        self.telemetry = telemetry or Telemetry(enabled=False)
        self.health = {route: BackendHealth() for route in backends}
        self.shadow = ShadowCounters()
        #: An operator's write pause (the cutover window), above the flag file.
        self.gate = gate or WriteGate(self.telemetry.event)
        self._background: set[asyncio.Task[Any]] = set()

    # -- the plumbing of one backend call ------------------------------------------------------

    async def _call(self, route: Route, op: Op, call: Awaitable[T], parent: Call,
                    span: trace.Span | None = None) -> T:
        """Await a backend call, keeping its health, latency metric and child span."""
        if span is None and parent.span is not None:
            span = self._backend_span(route, op, parent)
        health = self.health[route]
        health.calls += 1
        started = time.perf_counter()
        failed = False
        try:
            return await call
        except StopAsyncIteration:
            raise  # the end of a Keys listing: a call that succeeded with nothing more to give
        except BaseException as exc:
            failed = True
            if isinstance(exc, BackendUnavailable):
                health.errors += 1
                health.consecutive_errors += 1
                health.last_error = str(exc)
            if span is not None:
                span.set_status(trace.StatusCode.ERROR, str(exc))
            raise
        finally:
            self.metrics.backend_call(route, op, time.perf_counter() - started, failed=failed)
            if not failed:
                health.consecutive_errors = 0
            if span is not None:
                span.end()

    def _backend_span(self, route: Route, op: Op, parent: Call) -> trace.Span | None:
        return self.telemetry.backend_span(parent.span, op.value, route.value, self.backends[route].type_name)

    async def _decide_shared(self, op: Op, key: str, call: Call) -> tuple[Decision, Router]:
        """_decide for a Get or Has under `--workers N`, where the queue's stored record of a key is the
        truth (another worker may have written the key since this one did), so that a read on any
        connection sees the key's last write, as in one process.

        The record is looked up when a copy may be on its way to where the key is read: when this
        worker knows of one (its memory may hold an older direction), or when the key's writes go
        elsewhere than its reads. Not otherwise, to keep a lookup off every read: a key written and
        read in one store may then, for the moments until its copy lands, still have a copy of a write
        made before a flag change on its way.
        """
        router = self.routes.router
        decision = router.route(op, key, call.caller)
        stored = None
        if _follows_pending(decision) and (self.queue.pending(key) is not None
                                           or router.route(Op.SET, key, call.caller).primary is not decision.primary):
            stored = await self.queue.stored_intent(key)
        return self._decide(op, key, call, (router, decision), stored)

    def _decide(self, op: Op, key: str, call: Call, routed: tuple[Router, Decision] | None = None,
                stored: Intent | None = None) -> tuple[Decision, Router]:
        """The route of one call. `routed`: the router and decision already taken for it; `stored`: under
        `--workers N`, the key's pending copy as the queue store has it (see _decide_shared)."""
        if routed is None:
            router = self.routes.router
            decision = router.route(op, key, call.caller)
        else:
            router, decision = routed
        catching_up = False
        if op in _KEY_READS and _follows_pending(decision):
            intent = stored if self.queue.shared else self.queue.pending(key)
            if intent is not None and intent.target == decision.primary.value:
                # Its last write is still on the way here: read it where it is (see the docstring).
                decision = replace(decision, primary=decision.secondary, secondary=decision.primary, compare=False)
                catching_up = True
            elif intent is not None and decision.compare:
                # The shadow is known to lag behind this key's last write: comparing would only
                # report the lag. Counted, so a queue that stays behind shows in status.
                decision = replace(decision, compare=False)
                self.shadow.pending_not_compared += 1
        self.metrics.operation(op, decision.primary)  # StrEnum members are their own str values
        span = call.span
        if span is not None and span.is_recording():
            if catching_up:
                span.set_attribute(PENDING_WRITE, True)
            span.set_attribute(attr.ROUTE, decision.primary.value)
            span.set_attribute(attr.ROUTE_REASON, decision.reason.value)
            span.set_attribute(attr.SHADOW, decision.compare)
            span.set_attribute(attr.FLAGS_REVISION, router.flags.revision)
            if self.telemetry.record_keys:
                span.set_attribute(attr.KEY, key)
        return decision, router

    def _shadow_task(self, decision: Decision, op: Op, run: Callable[[Backend], Awaitable[T]],
                     call: Call) -> Shadow[T] | None:
        if not decision.compare:
            return None
        if self.shadow.in_flight >= MAX_SHADOW_IN_FLIGHT:
            self.shadow.skipped += 1
            return None
        self.shadow.calls += 1
        secondary = decision.secondary
        # The span starts now: the task may first run after the caller's span has ended.
        span = None if call.span is None else self._backend_span(secondary, op, call)
        # Eagerly: a store that answers without waiting is done before the primary starts, so the
        # comparison and a write's settling happen in line, with no Task and no held key lock.
        task = start_eagerly(self._call(secondary, op, run(self.backends[secondary]), call, span))
        if isinstance(task, Finished):
            # Done already (never in flight, as nothing ran meanwhile): a callback would cost a turn.
            if task.error is not None:
                self.shadow.failures += 1
        else:
            self.shadow.in_flight += 1
            task.add_done_callback(self._shadow_done)
        return task

    def _shadow_done(self, task: asyncio.Future[Any]) -> None:
        self.shadow.in_flight -= 1
        if task.cancelled() or task.exception() is not None:
            self.shadow.failures += 1

    # -- comparison ----------------------------------------------------------------------------

    def _compare(self, op: Op, key: str, decision: Decision, router: Router, call: Call, primary: Any,
                 shadow: Shadow[Any], judge: Callable[[Any, Any], Kind | None],
                 show: Callable[[Any], str | None]) -> None:
        """Compare now if the shadow has answered, else when it does; the caller never waits."""
        if isinstance(shadow, Finished) or shadow.done():
            self._judge(op, key, decision, router, call, primary, shadow, judge, show)
            return

        async def later() -> None:
            await asyncio.wait([shadow])
            self._judge(op, key, decision, router, call, primary, shadow, judge, show)

        self._keep(asyncio.create_task(later()))

    def _judge(self, op: Op, key: str, decision: Decision, router: Router, call: Call, primary: Any,
               shadow: Shadow[Any], judge: Callable[[Any, Any], Kind | None],
               show: Callable[[Any], str | None]) -> None:
        self.discrepancies.compared(op)
        detail = ""
        shadow_shown: str | None = None
        if shadow.cancelled() or shadow.exception() is not None:
            kind = Kind.SHADOW_ERROR
            detail = "cancelled" if shadow.cancelled() else str(shadow.exception())
        else:
            judged = judge(primary, shadow.result())
            if judged is None:
                return  # the usual outcome: nothing to show, so nothing is rendered
            kind = judged
            shadow_shown = show(shadow.result())
            if op is Op.KEYS:
                diff = compare_key_sets(primary, shadow.result())
                detail = (f"missing in shadow: {diff.missing} {list(diff.missing_sample)}; "
                          f"extra in shadow: {diff.extra} {list(diff.extra_sample)}")
        self._record(op, key, kind, decision, router, call, trim(show(primary)), trim(shadow_shown), detail)

    def _record(self, op: Op, key: str, kind: Kind, decision: Decision, router: Router, call: Call,
                primary: str | None, shadow: str | None, detail: str) -> None:
        revision = router.flags.revision
        self.discrepancies.record(Discrepancy(time.time(), op.value, key, kind.value, primary, shadow,
                                              decision.primary.value, revision, detail))
        attributes: dict[str, Any] = {
            attr.DISCREPANCY: True, attr.DISCREPANCY_KIND: kind.value, attr.ROUTE: decision.primary.value,
            attr.ROUTE_REASON: decision.reason.value, attr.SHADOW: True, attr.FLAGS_REVISION: revision,
            "turnout.op": op.value,
        }
        if self.telemetry.record_keys:
            attributes[attr.KEY] = key
        span = call.span
        if span is not None and span.is_recording():
            span.set_attribute(attr.DISCREPANCY, True)
            span.set_attribute(attr.DISCREPANCY_KIND, kind.value)
        self.telemetry.discrepancy(span, attributes)

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, key: Key, call: Call) -> Value | None:
        decision, router = (await self._decide_shared(Op.GET, key, call) if self.queue.shared
                            else self._decide(Op.GET, key, call))
        shadow = self._shadow_task(decision, Op.GET, lambda b: b.get(key), call)
        value = await self._call(decision.primary, Op.GET, self.backends[decision.primary].get(key), call)
        if shadow is not None:
            self._compare(Op.GET, key, decision, router, call, value, shadow, compare_values, _show_value)
        return value

    async def has(self, key: Key, call: Call) -> bool:
        decision, router = (await self._decide_shared(Op.HAS, key, call) if self.queue.shared
                            else self._decide(Op.HAS, key, call))
        shadow = self._shadow_task(decision, Op.HAS, lambda b: b.has(key), call)
        found = await self._call(decision.primary, Op.HAS, self.backends[decision.primary].has(key), call)
        if shadow is not None:
            self._compare(Op.HAS, key, decision, router, call, found, shadow, compare_presence, _show_presence)
        return found

    async def keys(self, prefix: str, call: Call) -> AsyncIterator[list[Key]]:
        decision, router = self._decide(Op.KEYS, prefix, call)
        backend = self.backends[decision.primary]
        if not self.queue.shared:
            pending = self.queue.pending_under(prefix)  # {} at once when nothing is pending
        elif _follows_pending(decision) or decision.compare:
            # Under `--workers N` the store has every worker's records, this one's among them.
            pending = await self.queue.stored_under(prefix)
        else:
            pending = {}
        # Keys whose last write is still being copied *to* the primary: their source says whether they exist.
        lagging: frozenset[str] = frozenset()
        if pending and _follows_pending(decision):
            lagging = frozenset(k for k, intent in pending.items() if intent.target == decision.primary.value)
        # Keys known to differ between the stores for now, whichever way their copy goes: not compared.
        unsure = frozenset(pending)
        shadow = self._shadow_task(decision, Op.KEYS, lambda b: _all_keys(b, prefix, unsure), call)
        seen: list[str] | None = [] if shadow is not None else None
        extra: list[str] = []
        if lagging:
            if call.span is not None and call.span.is_recording():
                call.span.set_attribute(PENDING_WRITE, True)
            extra = await self._present_at_source(lagging, pending, call)
        merge = backend.ordered_scan  # keep an ordered listing ordered
        merged = 0  # extra[:merged] went out already
        pages = backend.keys(prefix)
        while True:
            try:
                page = await self._call(decision.primary, Op.KEYS, anext(pages), call)
            except StopAsyncIteration:
                break
            if lagging:
                page = [k for k in page if k not in lagging]
            if seen is not None:
                seen.extend([k for k in page if k not in unsure] if unsure else page)
                if len(seen) > MAX_COMPARED_KEYS:
                    seen = None
                    self.shadow.keys_not_compared += 1
            if not lagging:
                yield page
                continue
            if merge and page and merged < len(extra):
                upto = bisect.bisect_right(extra, page[-1], merged)
                if upto > merged:
                    page = list(heapq.merge(page, extra[merged:upto]))
                    merged = upto
            for chunk in _paged(page):
                yield chunk
        for chunk in _paged(extra[merged:]):
            yield chunk
        if shadow is not None and seen is not None:
            self._compare(Op.KEYS, prefix, decision, router, call, seen, shadow, _judge_keys, _show_keys)

    async def _present_at_source(self, lagging: frozenset[str], pending: Mapping[str, Intent],
                                 call: Call) -> list[str]:
        """The lagging keys that their pending write's source holds now, sorted."""
        slots = asyncio.Semaphore(PRESENCE_CONCURRENCY)

        async def present(key: str) -> bool:
            route = Route(pending[key].source)
            async with slots:
                return await self._call(route, Op.HAS, self.backends[route].has(key), call)

        keys = sorted(lagging)
        found = await asyncio.gather(*(present(k) for k in keys), return_exceptions=True)
        for outcome in found:
            if isinstance(outcome, BaseException):
                raise outcome  # the listing cannot be complete without it
        return [k for k, there in zip(keys, found, strict=True) if there]

    # -- writes --------------------------------------------------------------------------------

    async def set(self, key: Key, value: Value, call: Call) -> None:
        await self._write(Op.SET, key, lambda backend: backend.set(key, value), call)

    async def delete(self, key: Key, call: Call) -> bool:
        existed: bool = await self._write(Op.DELETE, key, lambda backend: backend.delete(key), call)
        return existed

    async def _write(self, op: Op, key: Key, apply: Callable[[Backend], Awaitable[T]], call: Call) -> T:
        router = self.routes.router
        if router.flags.read_only:
            revision = router.flags.revision
            raise ReadOnly(f"writes are paused: the flag file says read_only: true (revision {revision!r})")
        if self.gate.paused is not None:
            self.gate.check()
        decision, router = self._decide(op, key, call)
        queue = self.queue
        release = await self.locks.acquire(key)
        handed_off = False
        try:
            # Under the kill switch a write stays on old, unless an earlier write of this key is
            # still on its way between the stores: then its direction must follow this write.
            if (decision.replicate or queue.pending(key) is not None
                    or (queue.shared and await queue.stored_intent(key) is not None)):
                source, target = decision.primary, decision.secondary  # StrEnum members are their str values
                # The replayer is woken below only if the shadow write does not settle the intent.
                if not queue.record_at_once(key, source, target, wake=False):
                    await queue.record(key, source, target, wake=False)
            shadow = self._shadow_task(decision, op, apply, call)
            try:
                result = await self._call(decision.primary, op, apply(self.backends[decision.primary]), call)
            except BaseException:
                if isinstance(shadow, asyncio.Task) and not shadow.done():
                    # The primary may not hold what the shadow wrote: the replayer copies its state.
                    self._finish_shadow_write(key, shadow, release, settle=False)
                    handed_off = True
                raise
            if shadow is not None:
                judge = compare_presence if op is Op.DELETE else _no_difference
                if isinstance(shadow, asyncio.Task) and not shadow.done():
                    self._compare(op, key, decision, router, call, result, shadow, judge, _show_presence)
                    self._finish_shadow_write(key, shadow, release, settle=True)
                    handed_off = True
                else:
                    ok = not shadow.cancelled() and shadow.exception() is None  # a Finished answers as a Future
                    if ok and judge is _no_difference:
                        # All _judge would do: a Set has no answer to compare, only its success.
                        self.discrepancies.compared(op)
                    else:
                        self._judge(op, key, decision, router, call, result, shadow, judge, _show_presence)
                    if ok:
                        queue.settle(key)  # both stores hold this write already
            return result
        finally:
            if not handed_off:
                release()
                self.queue.wake()  # a no-op once the intent is settled

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

        self._keep(asyncio.create_task(finish()))

    async def close(self) -> None:
        """Let shadow work still running finish; the replication queue keeps whatever it misses."""
        self.gate.close()
        if self._background:
            await asyncio.wait(set(self._background), timeout=SHADOW_DRAIN_S)


def _follows_pending(decision: Decision) -> bool:
    """Whether a read follows a key's pending copy: not under the kill switch or an override, which keep
    the other store out of the answer whatever it holds (the replayer brings old up to date)."""
    return decision.replicate and decision.reason is not Reason.OVERRIDE


async def _all_keys(backend: Backend, prefix: str, skip: frozenset[str] = frozenset()) -> list[str] | None:
    """The shadow's listing, without the keys left out of the comparison."""
    keys: list[str] = []
    async for page in backend.keys(prefix):
        keys.extend([k for k in page if k not in skip] if skip else page)
        if len(keys) > MAX_COMPARED_KEYS:
            return None
    return keys


def _paged(keys: list[str]) -> Iterator[list[str]]:
    """A listing cut into pages no longer than a backend's (an empty one gives none)."""
    for start in range(0, len(keys), DEFAULT_PAGE_SIZE):
        yield keys[start:start + DEFAULT_PAGE_SIZE]


def _judge_keys(primary: list[str], shadow: list[str] | None) -> Kind | None:
    return None if shadow is None else compare_key_sets(primary, shadow).kind


def _show_keys(keys: list[str] | None) -> str | None:
    return None if keys is None else f"{len(keys)} keys: {', '.join(sorted(keys)[:10])}"


def _show_value(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="replace")


def _show_presence(found: Any) -> str | None:
    return "present" if found else None


def _no_difference(primary: Any, shadow: Any) -> Kind | None:
    return None  # a Set has no answer to compare; only a failing shadow counts
