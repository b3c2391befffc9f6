"""Writes keys into a backend from several concurrent writers and prints each key only once its
write was acknowledged.

Run by the conformance suite, which SIGKILLs this process mid-stream: every printed key must then
be found in the store. Writers run concurrently so that the kill lands while group-committed
batches are being flushed, not only between two lone writes.

With a fourth argument, the jsonfile store's flush_interval (its journal on), each writer also
deletes every third key it wrote once that set is acknowledged and prints `-<key>` once the delete
is: a killed writer must then have lost no acknowledged write and revived no deleted key.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from proxy.backends import open_backend
from proxy.config import BackendSpec

WRITERS = 8


async def main(kind: str, path: str, count: int, flush_interval: float | None) -> None:
    options = {} if flush_interval is None else {"flush_interval": flush_interval}
    backend = await open_backend(BackendSpec(type=kind, path=Path(path), options=options))
    print("ready", flush=True)

    async def writer(first: int) -> None:
        for i in range(first, count, WRITERS):
            key = f"crash:{i:06}"
            await backend.set(key, json.dumps({"i": i, "pad": "x" * 100}).encode())
            print(key, flush=True)
            if flush_interval is not None and i % 3 == 0:
                await backend.delete(key)
                print(f"-{key}", flush=True)

    await asyncio.gather(*(writer(n) for n in range(WRITERS)))
    await backend.close()


if __name__ == "__main__":
    interval = float(sys.argv[4]) if len(sys.argv) > 4 else None
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), interval))
