"""The garbage collector's settings once a process has started: for the server and for bulk commands.

Young collections run every 700 allocations by default, and each one, and every older one after
them, also walks what start-up left alive (imported modules, the stores' indexes). A gRPC call
allocates a few dozen short-lived objects and a bulk copy a few per key, so at the default
threshold the collector took a large share of both: frozen, start-up's objects are never walked
again, and the higher threshold makes young collections rarer at a cost of a little memory
(bench/run.py's server CPU per call and bench/migrate_servers.py show the difference: migrate into
PostgreSQL about 170k -> 205k keys/s).

Nothing large may wait for the collector: a refused request used to sit in a reference cycle
(grpc's abort keeps its traceback, which holds the handler's frame and the request) until a
collection came, thousands of calls later; serving/refusals.py breaks that cycle instead.
"""

from __future__ import annotations

import gc

#: Allocations between two young-generation collections (Python's default is 700).
GC_YOUNG_THRESHOLD = 20_000


def settle_garbage_collector() -> None:
    """Freeze what is alive now out of the collector's walks, and make young collections rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
