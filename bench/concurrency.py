"""Throughput of one async operation called by many concurrent callers for a fixed time.

The store benchmarks (postgres_store, redis_store, upstream_store, sqlite_backend) all measure this
way, so their figures mean the same thing: `workers` loops share one event loop, each calls the
operation with an integer that picks its key, and the count of finished calls over the elapsed time
is the rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

#: Loop n starts its keys at n * START and walks them by a step: two primes, so loops sharing a key
#: space spread over it rather than following each other key by key.
START = 977
STEP = 7919


@dataclass(frozen=True, slots=True)
class Run:
    calls: int
    seconds: float
    #: CPU time this process spent meanwhile (every thread, so a driver's own threads count too).
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_seconds * 1e6 / max(self.calls, 1)


async def run_concurrently(op: Callable[[int], Awaitable[Any]], workers: int, seconds: float,
                           step: int = STEP) -> Run:
    """Call op from `workers` loops at once until `seconds` have passed; each loop waits for its
    call before the next, and walks its keys from its own start by `step`."""
    done = 0
    stop = time.monotonic() + seconds

    async def loop(n: int) -> None:
        nonlocal done
        i = n * START
        while time.monotonic() < stop:
            await op(i)
            done += 1
            i += step

    started, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(loop(n) for n in range(workers)))
    return Run(done, time.monotonic() - started, time.process_time() - cpu)
