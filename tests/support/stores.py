"""Reading and seeding the embedded stores directly, as an operator or the old application would."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from proxy.backends.base import Backend
from proxy.backends.sqlite import SqliteBackend


def legacy_contents(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def sqlite_contents(path: Path) -> dict[str, Any]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {key: json.loads(value) for key, value in connection.execute("SELECT key, value FROM kv")}
    finally:
        connection.close()


def seed_sqlite(path: Path, items: dict[str, Any]) -> None:
    async def seed() -> None:
        backend = await SqliteBackend.open(path)
        await backend.set_many([(key, json.dumps(value).encode()) for key, value in items.items()])
        await backend.close()

    asyncio.run(seed())


async def backend_contents(backend: Backend) -> dict[str, Any]:
    """Every document a backend holds, parsed, by key."""
    return {k: json.loads(v) async for page in backend.scan() for k, v in page}
