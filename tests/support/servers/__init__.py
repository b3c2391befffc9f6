"""Real database servers started for the test session on loopback ports (PostgreSQL, Redis, a second
turnout), and the fixtures that give each test a fresh namespace on them (a table, a key prefix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from proxy.config import BackendSpec


class Restartable(Protocol):
    """A test server an outage test can take down and bring back on the same address."""

    @property
    def running(self) -> bool: ...

    def stop(self) -> None: ...

    def start(self) -> object: ...


def spec_document(spec: BackendSpec) -> dict[str, Any]:
    """A spec as a config file's backend mapping would give it (write_config takes this)."""
    options = {name: str(value) if isinstance(value, Path) else value
               for name, value in spec.options.items() if value is not None}
    document: dict[str, Any] = {"type": spec.type, **options}
    if spec.path is not None:
        document["path"] = str(spec.path)
    return document
