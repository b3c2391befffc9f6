"""What a discrepancy's triage record says beyond the two answers: the key's recent writes as the
replication queue saw them, the routing decision, and the trace id of the call that found it.

The recent writes are a bounded ring kept where the dispatcher records a write's intent: for each of
the last MAX_KEYS keys written, its last PER_KEY writes (time, op, source -> target). Whether a write's
copy is still pending is asked of the queue when a record is made: a key has one pending copy at a
time, which covers every write of it since that copy became pending (`Intent.since`), so the writes
from then on are `pending` and those before it `settled`. Each process keeps its own ring (under
`turnout serve --workers N`, the writes that worker took), and its own memory of pending copies
(a copy another worker left pending shows as settled here).
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from proxy.replication.queue import Intent, IntentQueue
from proxy.routing.router import Decision, Router, bucket

#: Keys whose writes are kept; the least recently written goes first.
MAX_KEYS = 4096
#: Writes kept per key.
PER_KEY = 5

#: (unix time, op, source, target)
Write = tuple[float, str, str, str]


class RecentWrites:
    """The ring: at most max_keys keys, at most per_key writes each (about 3 MB at the defaults)."""

    def __init__(self, max_keys: int = MAX_KEYS, per_key: int = PER_KEY,
                 clock: Callable[[], float] = time.time) -> None:
        if max_keys < 1 or per_key < 1:
            raise ValueError("the ring keeps at least one write of one key")
        self.max_keys = max_keys
        #: Where the older writes kept start: the last per_key - 1 of them (none for per_key 1).
        self._older = 1 - per_key if per_key > 1 else sys.maxsize
        self._clock = clock
        # Ordered by when each key was last written; OrderedDict, as evicting the first key of a plain
        # dict again and again walks the holes the earlier evictions left (microseconds a write).
        self._writes: OrderedDict[str, tuple[Write, ...]] = OrderedDict()

    def note(self, key: str, op: str, source: str, target: str) -> None:
        """A write of key whose intent the queue just recorded (source and target are Route values)."""
        writes = self._writes
        write = (self._clock(), op, source, target)
        earlier = writes.get(key)
        if earlier is None:
            if len(writes) >= self.max_keys:
                writes.popitem(last=False)  # the least recently written key
            writes[key] = (write,)
        else:
            writes[key] = (*earlier[self._older:], write)
            writes.move_to_end(key)

    def of(self, key: str, pending: Intent | None) -> tuple[dict[str, Any], ...]:
        """key's recent writes, oldest first, each `pending` or `settled` by the key's pending copy."""
        return tuple({"time": when, "op": op, "source": source, "target": target,
                      "state": "pending" if pending is not None and when >= pending.since else "settled"}
                     for when, op, source, target in self._writes.get(key, ()))

    def __len__(self) -> int:
        return len(self._writes)


def trace_id(span: Any) -> str | None:
    """The trace id of a caller's span as 32 hex digits (W3C), or None without one."""
    if span is None:
        return None
    trace = span.get_span_context().trace_id
    return f"{trace:032x}" if trace else None


def decision_fields(key: str, decision: Decision, router: Router) -> dict[str, Any]:
    """The routing decision as a record shows it. The bucket is the one the route turned on, else the
    key's bucket under the flags in force (what `turnout route KEY` would say)."""
    return {
        "secondary": decision.secondary.value,
        "reason": decision.reason.value,
        "bucket": decision.bucket if decision.bucket is not None else bucket(key, router.flags.bucket_salt),
    }


class Triage:
    """What a record adds for triage, from this process's ring and its queue's pending copies."""

    def __init__(self, queue: IntentQueue, recent: RecentWrites | None = None) -> None:
        self.queue = queue
        self.recent = recent if recent is not None else RecentWrites()
        self.note = self.recent.note  # the ring's own method: it runs on every write

    def fields(self, key: str, decision: Decision, router: Router, span: Any) -> dict[str, Any]:
        """The triage fields of a Discrepancy (proxy.data.discrepancies) for key."""
        return {**decision_fields(key, decision, router), "trace_id": trace_id(span),
                "writes": self.recent.of(key, self.queue.pending(key))}
