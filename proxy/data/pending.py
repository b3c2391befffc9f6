"""How a read's route follows a key's pending copy, so a read never loses a write because the key's
reads moved before its last write was copied.

When a Get or Has is routed to the backend a pending intent is still copying the key *to*, the
intent's source (which holds the key's newest state) answers instead, and nothing is compared (the
other side is known to lag). Under an override too (a rollback sends reads to old before the last
writes new took have landed there), but not under the kill switch, which keeps new out of the answer
whatever it holds while the replayer brings old up to date.

Where a key's pending copy is known depends on the queue, and the resolver is chosen once, with it
(`pending_copies`): one process reads its queue's memory, which is the truth (LocalPending), without
I/O or an await; the workers of `--workers N` read the shared queue's stored record, as another
worker may have written the key since (SharedPending). A resolver answers at once when it can, and
says ASK_STORE when only the queue store can, so the path of one process never awaits for it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import replace
from typing import Final, Literal, Protocol

from opentelemetry import trace

from proxy.data.shadow import ShadowCounters
from proxy.replication.local import ReplicationQueue
from proxy.replication.queue import Intent, IntentQueue
from proxy.replication.shared import SharedReplicationQueue
from proxy.routing.router import SET, Decision, Router

#: Span attribute: the read was answered by the backend its key's last write is being copied from.
PENDING_WRITE = "turnout.route.pending_write"


class _Store(enum.Enum):
    ASK = "ask"


#: A resolver's answer when only the queue store knows the key's pending copy: await `stored` for it.
ASK_STORE: Final = _Store.ASK
AskStore = Literal[_Store.ASK]


class PendingCopies(Protocol):
    """Where the copies of keys' last writes stand, as routing needs to know it."""

    def for_read(self, key: str) -> Intent | AskStore | None:
        """The pending copy of a key whose read may follow it, or ASK_STORE (then: stored_for_read)."""

    def for_write(self, key: str) -> Intent | AskStore | None:
        """The pending copy of a key about to be written, or ASK_STORE (then: stored)."""

    async def stored_for_read(self, key: str, decision: Decision, router: Router,
                              caller: str | None) -> Intent | None:
        """The key's pending copy as the queue store has it, for a read routed by decision."""

    async def stored(self, key: str) -> Intent | None:
        """The key's pending copy as the queue store has it."""

    async def under(self, prefix: str, decision: Decision) -> Mapping[str, Intent]:
        """The pending copies of the keys under prefix, for a Keys listing routed by decision."""


def follows_pending(decision: Decision) -> bool:
    """Whether a read follows a key's pending copy: always but under the kill switch, which keeps new out
    of use whatever it holds. An override (`turnout rollback`, an automatic rollback) is followed too:
    the writes new took before it are on their way to old, and until each lands, a read of that key
    from old would miss an acknowledged write."""
    return decision.replicate


def follow(decision: Decision, intent: Intent, counters: ShadowCounters, span: trace.Span | None) -> Decision:
    """The route of a key read, given the key's pending copy."""
    if intent.target == decision.primary.value:
        # Its last write is still on the way here: read it where it is (see the module's docstring).
        if span is not None and span.is_recording():
            span.set_attribute(PENDING_WRITE, True)
        return replace(decision, primary=decision.secondary, secondary=decision.primary, compare=False)
    if decision.compare:
        # The shadow is known to lag behind this key's last write: comparing would only report the
        # lag. Counted, so a queue that stays behind shows in status.
        counters.pending_not_compared += 1
        return replace(decision, compare=False)
    return decision


class LocalPending:
    """One process: the queue's memory is the truth, read without I/O."""

    def __init__(self, queue: ReplicationQueue) -> None:
        self._queue = queue
        # The queue's own method, not one calling it: these run on every read and write.
        self.for_read = self.for_write = queue.pending

    async def stored_for_read(self, key: str, decision: Decision, router: Router,
                              caller: str | None) -> Intent | None:
        return self._queue.pending(key)  # never asked for: for_read always knows

    async def stored(self, key: str) -> Intent | None:
        return self._queue.pending(key)  # never asked for: for_write always knows

    async def under(self, prefix: str, decision: Decision) -> Mapping[str, Intent]:
        return self._queue.pending_under(prefix)  # {} at once when nothing is pending


class SharedPending:
    """The workers of `--workers N`: the stored record is the truth (another worker may have written the
    key since this one did), so that a read on any connection sees the key's last write, as in one process."""

    def __init__(self, queue: SharedReplicationQueue) -> None:
        self._queue = queue

    def for_read(self, key: str) -> Intent | AskStore | None:
        return ASK_STORE  # this worker's memory may hold an older direction, or nothing of another's write

    def for_write(self, key: str) -> Intent | AskStore | None:
        # Known pending here: the write records its own intent whichever direction the store says.
        return self._queue.pending(key) or ASK_STORE

    async def stored_for_read(self, key: str, decision: Decision, router: Router,
                              caller: str | None) -> Intent | None:
        """The record is looked up when a copy may be on its way to where the key is read: when this
        worker knows of one (its memory may hold an older direction), or when the key's writes go
        elsewhere than its reads. Not otherwise, to keep a lookup off every read: a key written and
        read in one store may then, for the moments until its copy lands, still have a copy of a write
        made before a flag change on its way."""
        if (self._queue.pending(key) is not None
                or router.route(SET, key, caller).primary is not decision.primary):
            return await self._queue.stored_intent(key)
        return None

    async def stored(self, key: str) -> Intent | None:
        return await self._queue.stored_intent(key)

    async def under(self, prefix: str, decision: Decision) -> Mapping[str, Intent]:
        if follows_pending(decision) or decision.compare:
            # The store has every worker's records, this one's among them.
            return await self._queue.stored_under(prefix)
        return {}


def pending_copies(queue: IntentQueue) -> PendingCopies:
    """The resolver for the queue's form, chosen once when the dispatcher is built."""
    if isinstance(queue, SharedReplicationQueue):
        return SharedPending(queue)
    if isinstance(queue, ReplicationQueue):
        return LocalPending(queue)
    raise TypeError(f"no pending-copy resolver for {type(queue).__name__}")
