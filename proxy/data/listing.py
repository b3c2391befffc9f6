"""A Keys listing that keeps a read's promise for every key under its prefix: each key is listed once,
as its last acknowledged write left it, even while that write is still being copied.

The keys a pending intent is still copying to the listing's backend are left out of that backend's
pages, and those their intent's source holds are added once, after the pages (merged into them in
order when the backend lists in order). All the keys pending under the prefix, whichever way their
copy goes, are left out of a Keys comparison on both sides: they are known to lag, so comparing them
would only report that lag as discrepancies. A listing larger than MAX_COMPARED_KEYS is not compared.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
from collections.abc import AsyncIterator, Iterator, Mapping

from proxy.backends.base import DEFAULT_PAGE_SIZE, Backend, Key
from proxy.data.backendcall import BackendCalls, Call
from proxy.data.compare import Kind, compare_key_sets
from proxy.data.pending import PENDING_WRITE, PendingCopies, follows_pending
from proxy.data.shadow import ShadowLane
from proxy.replication.queue import Intent
from proxy.routing.router import Decision, Op, Route, Router

#: A Keys listing larger than this is not compared (holding both sides would cost too much memory).
MAX_COMPARED_KEYS = 100_000
#: Presence checks a Keys listing makes at once on the source of its keys' pending writes.
PRESENCE_CONCURRENCY = 32


class KeyListing:
    """Lists the keys under a prefix on a decision's primary, with the pending keys merged in."""

    def __init__(self, calls: BackendCalls, pending: PendingCopies, shadows: ShadowLane) -> None:
        self._calls = calls
        self._pending = pending
        self._shadows = shadows

    async def pages(self, prefix: str, call: Call, decision: Decision, router: Router) -> AsyncIterator[list[Key]]:
        calls = self._calls
        backend = calls.backends[decision.primary]
        pending = await self._pending.under(prefix, decision)
        # Keys whose last write is still being copied *to* the primary: their source says whether they exist.
        lagging: frozenset[str] = frozenset()
        if pending and follows_pending(decision):
            lagging = frozenset(k for k, intent in pending.items() if intent.target == decision.primary.value)
        # Keys known to differ between the stores for now, whichever way their copy goes: not compared.
        unsure = frozenset(pending)
        shadow = None
        if decision.compare:
            shadow = self._shadows.start(Op.KEYS, prefix, decision, router, call,
                                         _all_keys(calls.backends[decision.secondary], prefix, unsure))
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
                page = await calls.call(decision.primary, Op.KEYS, anext(pages), call)
            except StopAsyncIteration:
                break
            if lagging:
                page = [k for k in page if k not in lagging]
            if seen is not None:
                seen.extend([k for k in page if k not in unsure] if unsure else page)
                if len(seen) > MAX_COMPARED_KEYS:
                    seen = None
                    self._shadows.counters.keys_not_compared += 1
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
            shadow.compare(seen, _judge_keys, _show_keys)

    async def _present_at_source(self, lagging: frozenset[str], pending: Mapping[str, Intent],
                                 call: Call) -> list[str]:
        """The lagging keys that their pending write's source holds now, sorted."""
        slots = asyncio.Semaphore(PRESENCE_CONCURRENCY)
        calls = self._calls

        async def present(key: str) -> bool:
            route = Route(pending[key].source)
            async with slots:
                return await calls.call(route, Op.HAS, calls.backends[route].has(key), call)

        keys = sorted(lagging)
        found = await asyncio.gather(*(present(k) for k in keys), return_exceptions=True)
        for outcome in found:
            if isinstance(outcome, BaseException):
                raise outcome  # the listing cannot be complete without it
        return [k for k, there in zip(keys, found, strict=True) if there]


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
