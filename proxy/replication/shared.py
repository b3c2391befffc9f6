"""The replication queue shared by the workers of one proxy (`turnout serve --workers N`): the stored
record is the truth, and a worker's memory only a hint of what to look at.

Every worker records in one store and holds the key's turn across workers (proxy.data.sharedlocks)
while it changes a key's record. A key's record may have been replaced by another worker's later
write, with the other direction, or settled and removed: so a worker always writes its record (never
trusting that its own earlier one is still there), copies in the direction the stored record says,
and removes a record only if it is still the one it settled.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.backends.base import get_many
from proxy.replication.queue import Intent, IntentQueue


class SharedReplicationQueue(IntentQueue):
    """One worker's view of the queue the workers share; its memory says which keys to look at."""

    def record_at_once(self, key: str, source: str, target: str, *, wake: bool = True) -> bool:
        """Never: another worker may have replaced or removed the record since, so record() writes it."""
        return False

    def _since(self, key: str) -> float:
        return self._clock()  # another worker may have replaced or removed the record: never trust memory

    async def _to_copy(self, key: str, remembered: Intent) -> Intent | None:
        stored = await self.stored_intent(key)
        if stored is None:  # another worker copied it and removed the record
            self._pending.pop(key, None)
            self._changed()
            return None
        self._pending[key] = stored
        return stored

    async def _still_stored(self, key: str, intent: Intent) -> bool:
        return await self.stored_intent(key) == intent

    async def stored_under(self, prefix: str) -> dict[str, Intent]:
        """The records in the store of the keys that start with prefix, whichever worker wrote them; a
        record already settled but not yet removed is among them, which only costs a look."""
        return {key: Intent.decode(key, raw) async for page in self._store.scan(prefix) for key, raw in page}

    async def pending_among(self, keys: Sequence[str]) -> set[str]:
        """The keys any worker has a record for in the store (one read for the page): another worker's
        write may still be on its way. A record settled but not yet removed counts too; the key is then
        skipped though both stores hold its last write, which costs nothing."""
        stored = await get_many(self._store, keys)
        recorded = {key for key, raw in zip(keys, stored, strict=True) if raw is not None}
        return recorded | await super().pending_among(keys)

    async def stored_intent(self, key: str) -> Intent | None:
        """The record for key in the store, whichever worker wrote it."""
        raw = await self._store.get(key)
        return None if raw is None else Intent.decode(key, raw)
