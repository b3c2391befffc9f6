"""What a migration inside a running proxy needs of the data plane, and no more (so the migration
library, which the command line loads too, never loads the dispatcher)."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.data.keylocks import KeyLocks
from proxy.replication.queue import IntentQueue
from proxy.routing.watcher import FlagWatcher


@dataclass(frozen=True, slots=True)
class Live:
    """What coordinates a migration with live traffic: a key's writes wait for its turn, the queue says
    which copies are in flight, and the routes say which store is each key's source of truth."""

    locks: KeyLocks
    queue: IntentQueue
    routes: FlagWatcher
