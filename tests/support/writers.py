"""Writers hammering a running proxy through a migration, and the check that every write they had
acknowledged is what the stores hold afterwards (none lost, no deleted key back).

The live migration tests share these: each runs the plan while `writing`, then compares the stores
with `expected_after` the writers' acknowledged writes.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycountry
from turnout import AsyncClient, TurnoutError

from tests.support.proxy_process import run_turnout


def subdivisions() -> dict[str, Any]:
    """A real public data set as a legacy store: ISO 3166-2 subdivisions (pycountry, LGPL-2.1)."""
    data = Path(pycountry.__file__).parent / "databases" / "iso3166-2.json"
    return {f"subdivision:{s['code']}": s for s in json.loads(data.read_text(encoding="utf-8"))["3166-2"]}


@dataclass
class Writer:
    """Updates, deletes and creates keys of its own; remembers the last acknowledged state of each.

    Writers share no key, so each key's writes are sequential and its final state is known."""

    keys: list[str]
    acknowledged: dict[str, Any] = field(default_factory=dict)  # key -> document, None for deleted
    uncertain: set[str] = field(default_factory=set)  # a write that failed may or may not have landed
    refused: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, target: str, seed: int) -> None:
        rng = random.Random(seed)
        async with AsyncClient(target, timeout=5, user=f"writer-{seed}") as client:
            i = 0
            while not self.stop.is_set():
                key = rng.choice(self.keys) if rng.random() < 0.8 else f"fresh:{seed}:{i}"
                delete = rng.random() < 0.2
                value = None if delete else {"writer": seed, "i": i}
                try:
                    if delete:
                        await client.delete(key)
                    else:
                        await client.set(key, value)
                except TurnoutError:
                    self.refused += 1  # e.g. the cutover's write pause
                    self.uncertain.add(key)
                else:
                    self.acknowledged[key] = value
                    self.uncertain.discard(key)
                i += 1
                await asyncio.sleep(0.002)


@asynccontextmanager
async def writing(target: str, writers: Sequence[Writer]) -> AsyncIterator[None]:
    """The writers write to the proxy at `target` (writer n seeded with n) until the block ends;
    leaving it stops them and waits until each has ended, so their records are final."""
    tasks = [asyncio.create_task(w.run(target, n)) for n, w in enumerate(writers)]
    try:
        yield
    finally:
        for writer in writers:
            writer.stop.set()
        await asyncio.gather(*tasks)


async def turnout(config: Path, *args: str, expect: int = 0) -> dict[str, Any]:
    """`run_turnout` on a thread of its own, so the event loop (and the writers) run on meanwhile."""
    return await asyncio.to_thread(run_turnout, config, *args, expect=expect)


def expected_after(legacy: Mapping[str, Any], writers: Sequence[Writer]) -> tuple[dict[str, Any], set[str]]:
    """What a store must hold after the writers wrote over `legacy`, and the keys whose last write
    failed (it may or may not have landed, so those keys are not judged)."""
    expected = dict(legacy)
    for writer in writers:
        for key, value in writer.acknowledged.items():
            if value is None:
                expected.pop(key, None)
            else:
                expected[key] = value
    return expected, set().union(*(w.uncertain for w in writers))


def assert_every_acknowledged_write_held(legacy: Mapping[str, Any], writers: Sequence[Writer],
                                         *stores: Mapping[str, Any], at_least: int) -> None:
    """Each store holds exactly the expected state at every judged key (so no acknowledged write is
    lost and no deleted key came back), and the writers had more than `at_least` writes acknowledged
    (so the check judged real traffic)."""
    expected, uncertain = expected_after(legacy, writers)
    for key in set(expected).union(*stores):
        if key not in uncertain:
            for store in stores:
                assert store.get(key) == expected.get(key), key
    assert sum(len(w.acknowledged) for w in writers) > at_least
