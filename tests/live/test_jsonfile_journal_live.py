"""A real `turnout serve` with the legacy file's journal on: killed with SIGKILL it loses no acknowledged
write and revives no deleted key, the offline tools see the journaled writes, and a clean stop leaves
the file whole with no journal beside it."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from turnout import AsyncClient

from proxy.backends.jsonjournal import journal_path
from tests.support.proxy_process import ProxyProcess, run_turnout, write_config
from tests.support.stores import legacy_contents, sqlite_contents

WRITES = 300
#: No rewrite of the file happens during the test: the journal alone holds the writes until the stop.
FLUSH_INTERVAL = 600


async def write_and_delete(target: str) -> dict[str, Any]:
    """Sequential Sets, every fourth key deleted again; key -> its acknowledged value (None: deleted)."""
    acknowledged: dict[str, Any] = {}
    async with AsyncClient(target, timeout=5, user="journal-writer") as client:
        for i in range(WRITES):
            key = f"k{i:04}"
            await client.set(key, {"i": i})
            acknowledged[key] = {"i": i}
            if i % 4 == 0:
                await client.delete(key)
                acknowledged[key] = None
    return acknowledged


@pytest.mark.slow
async def test_sigkill_with_the_journal_on_then_tools_and_restart_see_every_write(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.json"
    legacy.write_text('{"kept": {"from": "old app"}, "k0001": "old value"}')
    config = write_config(tmp_path, old={"type": "jsonfile", "path": "legacy.json", "flush_interval": FLUSH_INTERVAL},
                          new={"type": "sqlite", "path": "new.sqlite"})
    proxy = ProxyProcess(config).start()
    try:
        acknowledged = await asyncio.wait_for(write_and_delete(proxy.target), 60)
    finally:
        proxy.stop(signal.SIGKILL)
    # Only the journal holds the writes: the file is still the old application's.
    assert legacy_contents(legacy) == {"kept": {"from": "old app"}, "k0001": "old value"}
    assert journal_path(legacy).exists()
    expected = {"kept": {"from": "old app"}} | {key: value for key, value in acknowledged.items() if value is not None}

    # validate reads the file as written, and the journal beside it, without opening the store.
    validated = run_turnout(config, "validate", "--store", "old")
    assert validated["ok"] is True
    assert validated["checked"] == len(expected)

    # migrate and verify open the store, which replays the journal into the file first.
    run_turnout(config, "migrate")
    assert run_turnout(config, "verify")["clean"] is True
    assert sqlite_contents(tmp_path / "new.sqlite") == expected
    assert legacy_contents(legacy) == expected

    with ProxyProcess(config) as restarted:
        async with AsyncClient(restarted.target, timeout=5) as client:
            for key, value in acknowledged.items():
                raw = await client.get_raw(key)
                assert (raw if raw is None else json.loads(raw)) == value, key
            assert await client.get("kept") == {"from": "old app"}
        assert restarted.stop() == 0
    assert legacy_contents(legacy) == expected
    assert not journal_path(legacy).exists()
