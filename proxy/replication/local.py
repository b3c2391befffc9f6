"""The replication queue of one process: its memory is the truth of what is pending.

Only this process records intents in its store, so what it remembers is what the store says, and a
key written again and again finds its intent already pending (or settled, its record not yet
removed) and records it without I/O (record_at_once): the hot path of a hot key.
"""

from __future__ import annotations

from proxy.replication.queue import Intent, IntentQueue


class ReplicationQueue(IntentQueue):
    """Pending intents of one process, kept in memory for speed and in `store` for durability."""

    def record_at_once(self, key: str, source: str, target: str, *, wake: bool = True) -> bool:
        """record() when the store already says it (no I/O, no await); False when record() must write.

        The hot path of a key written again and again: its intent is still pending with the same
        direction, or settled with its durable record not yet removed.
        """
        current = self._pending.get(key)
        if current is not None:
            # Already durably pending: nothing new to say if the direction is the same.
            return current.source == source and current.target == target
        stored = self._forget.get(key)
        if stored is None or stored.source != source or stored.target != target:
            return False
        # Settled, but its durable record is still there: it says exactly this again.
        del self._forget[key]
        self._pending[key] = Intent(key, source, target, self._clock())
        if wake:
            self._wakeup.set()  # all _changed(wake) does once something is pending
        return True

    def _since(self, key: str) -> float:
        # A copy still pending the other way keeps its age: the key has been behind since then.
        current = self._pending.get(key)
        return current.since if current else self._clock()

    async def _to_copy(self, key: str, remembered: Intent) -> Intent | None:
        return remembered

    async def _still_stored(self, key: str, intent: Intent) -> bool:
        return True  # nobody else writes the store
