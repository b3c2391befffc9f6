"""The migrate checkpoint is written at most every CHECKPOINT_EVERY_S, and whenever a run stops
early: an interrupted run still resumes after the last key whose batches all finished."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from proxy import statedir
from proxy.backends.jsonfile import JsonFileBackend
from proxy.backends.sqlite import SqliteBackend
from proxy.migration.migrate import CHECKPOINT_EVERY_S, migrate
from proxy.migration.stores import Stores
from proxy.routing.flags import Flags
from proxy.routing.router import Router
from proxy.statedir import CHECKPOINT_FILE
from tests.support.stores import backend_contents

KEYS = 4000


async def test_a_cancelled_run_keeps_its_checkpoint_and_the_next_resumes_there(tmp_path: Path) -> None:
    legacy = {f"user:{i:05}": {"n": i} for i in range(KEYS)}
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    old = await JsonFileBackend.open(tmp_path / "legacy.json")
    new = await SqliteBackend.open(tmp_path / "new.sqlite")
    stores = Stores(old, new, Router(Flags()))
    checkpoint_path = tmp_path / CHECKPOINT_FILE
    try:
        # Throttled to take several CHECKPOINT_EVERY_S, cancelled (as Ctrl-C does) once some
        # batches have landed: well before the first timed write on any but a stalled machine.
        run = asyncio.create_task(migrate(stores, tmp_path, batch_size=50, concurrency=2,
                                          rate=KEYS / (4 * CHECKPOINT_EVERY_S)))
        while len(await backend_contents(new)) < 200:
            assert not run.done(), "migrate ended before it was cancelled"
            await asyncio.sleep(0.01)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        checkpoint = statedir.read_json(checkpoint_path)
        assert checkpoint is not None
        assert checkpoint["complete"] is False
        last = checkpoint["last_key"]
        copied = await backend_contents(new)
        assert all(key in copied for key in legacy if key <= last)
        assert len(copied) < KEYS

        resumed = await migrate(stores, tmp_path, batch_size=50)
        assert resumed.resumed_after == last
        assert resumed.error_count == 0
        assert resumed.total == sum(1 for key in legacy if key > last)
        assert await backend_contents(new) == legacy
        assert statedir.read_json(checkpoint_path)["complete"] is True  # type: ignore[index]
    finally:
        await old.close()
        await new.close()
