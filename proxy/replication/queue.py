"""The durable replication queue: every write reaches the other backend, even across a crash.

Before a write touches its primary, the dispatcher records an *intent* ("key K changed on backend
S, copy it to T") in a durable store. The replayer later copies S's *current* state of K to T, its
value or its absence, and only then forgets the intent. Replaying is therefore idempotent and
order-free: a crash between any two steps loses nothing, and a delete is replicated like any write,
so no deleted key comes back. The dispatcher and the replayer take the same per-key lock, so a copy
never interleaves with a write of the same key.

The queue comes in two forms, which differ only in where the truth of a key's pending copy is: in
one process's memory (proxy.replication.local.ReplicationQueue), or in the store that the workers of
`turnout serve --workers N` share (proxy.replication.shared.SharedReplicationQueue). IntentQueue here
is everything else, and each form is one class beneath it, saying where it looks. One base rather
than a queue holding a "where the truth is" object: a write calls `pending`, `record_at_once`,
`settle` and `wake` on every call, and as the queue's own methods each costs one call, where
forwarding to a part would add one more to each.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from proxy.backends.base import Backend
from proxy.background import BackgroundTask
from proxy.data.keylocks import KeyLocks
from proxy.replication.replayer import copy_key, replay_forever

log = logging.getLogger(__name__)

#: How long a settled intent's durable record stays before it is removed (seconds).
FORGET_DELAY_S = 0.5


class Intent(NamedTuple):
    """Key K changed on backend `source`; copy it to `target`. Pending since `since` (unix time).

    Immutable like a frozen dataclass, but made in half the time (a hot key makes one per write).
    """

    key: str
    source: str
    target: str
    since: float

    def encode(self) -> bytes:
        return json.dumps({"source": self.source, "target": self.target, "since": self.since}).encode()

    @classmethod
    def decode(cls, key: str, raw: bytes) -> Intent:
        doc = json.loads(raw)
        return cls(key=key, source=str(doc["source"]), target=str(doc["target"]), since=float(doc["since"]))


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int
    oldest_age_s: float
    replayed: int
    failures: int
    last_error: str | None


class IntentQueue(abc.ABC):
    """Pending intents, kept in memory for speed and in `store` for durability, and their replayer."""

    def __init__(
        self,
        store: Backend,
        backends: Mapping[str, Backend],
        locks: KeyLocks,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._backends = backends
        self._locks = locks
        self._clock = clock
        self._pending: dict[str, Intent] = {}
        self._wakeup = asyncio.Event()
        #: Set once nothing is pending; made only while somebody drains, as every write toggles emptiness.
        self._drained: asyncio.Event | None = None
        #: Set when an intent is settled; made only while somebody waits, as writes settle far more often.
        self._settled: asyncio.Event | None = None
        self._replayer = BackgroundTask(
            lambda: replay_forever(self._wakeup, self._pending, self._replay_one), "replication-replayer")
        self._forget: dict[str, Intent] = {}  # settled, their durable records not yet removed
        self._forget_wakeup = asyncio.Event()
        self._forgetter = BackgroundTask(self._forget_forever, "replication-forget")
        self.replayed = 0
        self.failures = 0
        self.last_error: str | None = None

    # -- where each form looks for the truth ---------------------------------------------------

    @abc.abstractmethod
    def record_at_once(self, key: str, source: str, target: str, *, wake: bool = True) -> bool:
        """record() when the store already says it (no I/O, no await); False when record() must write."""

    @abc.abstractmethod
    def _since(self, key: str) -> float:
        """When a new record for key says its copy became pending."""

    @abc.abstractmethod
    async def _to_copy(self, key: str, remembered: Intent) -> Intent | None:
        """The intent the replayer carries out for key (held under its lock), or None when there is
        nothing left to copy. `remembered` is what this process's memory says."""

    @abc.abstractmethod
    async def _still_stored(self, key: str, intent: Intent) -> bool:
        """Whether the store's record of key is still the settled `intent`, so that removing it loses
        nothing (held under the key's lock)."""

    # -- the rest, common to both --------------------------------------------------------------

    async def load(self) -> int:
        """Read the intents a previous run left behind; returns how many."""
        async for page in self._store.scan():
            for key, raw in page:
                self._pending[key] = Intent.decode(key, raw)
        if self._pending:
            self._changed()
        return len(self._pending)

    async def record(self, key: str, source: str, target: str, *, wake: bool = True) -> None:
        """Durably note that key must be copied from source to target. Call holding the key's lock.

        wake=False leaves the replayer asleep: a writer that may settle the intent itself (a shadow
        write) calls wake() afterwards only if it did not, sparing the replayer a turn per write.
        """
        if self.record_at_once(key, source, target, wake=wake):
            return
        since = self._since(key)
        self._forget.pop(key, None)
        intent = Intent(key, source, target, since)
        await self._store.set(key, intent.encode())
        self._pending[key] = intent
        self._changed(wake)

    def wake(self) -> None:
        """Let the replayer look at the pending intents now."""
        if self._pending:
            self._wakeup.set()

    def settle(self, key: str) -> None:
        """Forget key's intent once its target holds the source's state. Call holding the key's lock.

        The durable record is removed later, in batches: until then a crash merely replays a copy
        that was already made, which is harmless, and a write no longer pays a second fsync. Nothing
        here waits, so a write settles without a coroutine of its own.
        """
        intent = self._pending.pop(key, None)
        if intent is not None:
            self._forget[key] = intent
            self._forget_wakeup.set()
            self._changed()
            if self._settled is not None:  # somebody waits (a live verify): tell them
                self._settled.set()
                self._settled = None

    async def _forget_forever(self) -> None:
        while True:
            await self._forget_wakeup.wait()
            self._forget_wakeup.clear()
            # A moment first, and only the records whose key stayed settled all along it go: a key
            # written again meanwhile (a hot key: every write makes a new intent) reuses its record
            # instead of paying for a delete and a fresh insert, each an fsync, the insert under the
            # key's lock with every other writer of the key waiting. The rest leave together.
            settled = dict(self._forget)
            await asyncio.sleep(FORGET_DELAY_S)
            await self._forget_settled(settled)

    async def _forget_settled(self, settled: Mapping[str, Intent] | None = None) -> None:
        """Remove the durable records of settled intents: those of `settled` that are still as they were
        there, or all when None. An entry leaves `_forget` only once its record is gone (or reused), so a
        failure or a cancellation leaves it for the next pass."""
        if settled is None:
            settled = self._forget
        # Checked again under each key's lock below; this only spares taking the locks of keys written since.
        removable = [(k, i) for k, i in settled.items() if self._forget.get(k) is i]

        async def remove(key: str, intent: Intent) -> None:
            # Under the key's lock, so a write recording a new intent for the key cannot interleave.
            async with self._locks.hold(key):
                if self._forget.get(key) is not intent:
                    return  # reused by a new write of the key, or settled again since
                if key not in self._pending and await self._still_stored(key, intent):
                    await self._store.delete(key)
                del self._forget[key]

        results = await asyncio.gather(*(remove(k, i) for k, i in removable), return_exceptions=True)
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            log.warning("could not remove %d settled intents from the queue store (will retry): %s",
                        len(failures), failures[0])

    def pending(self, key: str) -> Intent | None:
        return self._pending.get(key)

    async def pending_among(self, keys: Sequence[str]) -> set[str]:
        """Which of keys have a copy pending (a live migration's page, asked once for the page and
        held under the keys' locks). One process: its memory is the truth."""
        pending = self._pending
        return {key for key in keys if key in pending} if pending else set()

    def pending_under(self, prefix: str) -> dict[str, Intent]:
        """The pending intents of the keys that start with prefix, as a snapshot.

        A walk over everything pending: the set is small (it holds only writes not yet copied), and
        an empty queue costs nothing.
        """
        if not self._pending:
            return {}
        return {key: intent for key, intent in self._pending.items() if key.startswith(prefix)}

    async def wait_settled(self, key: str, timeout: float) -> bool:
        """Wait until key has no pending intent, at most timeout seconds; True when it has none."""
        try:
            async with asyncio.timeout(timeout):
                while key in self._pending:
                    if self._settled is None:
                        self._settled = asyncio.Event()
                    await self._settled.wait()
        except TimeoutError:
            return False
        return True

    def stats(self) -> QueueStats:
        oldest = min((i.since for i in self._pending.values()), default=None)
        return QueueStats(
            depth=len(self._pending),
            oldest_age_s=0.0 if oldest is None else max(0.0, self._clock() - oldest),
            replayed=self.replayed,
            failures=self.failures,
            last_error=self.last_error,
        )

    def start(self) -> None:
        self._replayer.start()
        self._forgetter.start()

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is pending, at most timeout seconds; True when drained."""
        try:
            async with asyncio.timeout(timeout):
                while self._pending:
                    if self._drained is None:
                        self._drained = asyncio.Event()
                    await self._drained.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        await self._replayer.stop()
        await self._forgetter.stop()
        await self._forget_settled()

    def _changed(self, wake: bool = True) -> None:
        if self._pending:
            if wake:
                self._wakeup.set()
        elif self._drained is not None:  # somebody drains: tell them
            self._drained.set()
            self._drained = None

    async def _replay_one(self, key: str, slots: asyncio.Semaphore) -> bool:
        async with slots, self._locks.hold(key):
            remembered = self._pending.get(key)
            if remembered is None:
                return True  # settled by a shadow write meanwhile
            try:
                intent = await self._to_copy(key, remembered)
            except Exception as exc:
                self.failures += 1
                self.last_error = f"reading the queue record of {key!r}: {exc}"
                return False
            if intent is None:
                return True
            try:
                await copy_key(key, self._backends[intent.source], self._backends[intent.target])
                self.settle(key)
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{intent.source}->{intent.target} {key!r}: {exc}"
                log.warning("replication of %r to %s failed (will retry): %s", key, intent.target, exc)
                return False
            self.replayed += 1
            return True

