"""Small JSON documents in state_dir (overrides, checkpoints, ...), replaced atomically and durably."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from proxy.durable import remove_file, replace_file


def write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any | None:
    """The document at path, or None when there is none."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def remove(path: Path) -> None:
    remove_file(path)
