"""What a discrepancy record may say about two documents without holding them: each one's size and
digest, and the JSON paths where they differ (contract §5: values only with `record_values`).

The digest is of the document's canonical JSON (members sorted, no whitespace), so two sides that
hold the same document in a different layout show the same digest, as the comparison itself would
judge them; an operator can compute it from a document they have. The paths are found by walking
both documents with a stack of our own (never Python's recursion, whatever the nesting), and both
the paths and the walk are bounded, so a record of two 4 MiB documents stays small and quick.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

#: Hex digits of the SHA-256 kept: 64 bits tell documents apart in triage and keep a record short.
DIGEST_HEX = 16
#: Paths listed at most; `truncated` says when there were more (or the walk stopped).
MAX_PATHS = 20
#: Nodes of the two documents visited at most, so that one record never holds the event loop long.
MAX_NODES = 100_000

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def digest(value: bytes) -> str:
    """The first DIGEST_HEX hex digits of SHA-256 over the canonical JSON of value (of its bytes as
    stored when they do not parse, or nest too deep for the parser)."""
    try:
        canonical = json.dumps(json.loads(value), sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        canonical = value
    return hashlib.sha256(canonical).hexdigest()[:DIGEST_HEX]


@dataclass(frozen=True, slots=True)
class Differences:
    """Where two documents differ, as JSON paths (`$.a[0]["odd key"]`); `truncated` when there were
    more than the bound (or the documents were too large to walk whole)."""

    paths: tuple[str, ...]
    truncated: bool = False


def _member(path: str, name: str) -> str:
    return f"{path}.{name}" if _NAME.match(name) else f"{path}[{json.dumps(name, ensure_ascii=False)}]"


def _scalar_equal(a: Any, b: Any) -> bool:
    # As the comparison judges: numbers as numbers (1 is 1.0), but true is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(a == b)
    return type(a) is type(b) and a == b


def differing_paths(primary: bytes, shadow: bytes, max_paths: int = MAX_PATHS,
                    max_nodes: int = MAX_NODES) -> Differences:
    """The paths where the two documents differ: a member or item on one side only, or a different
    type or scalar; `$` alone when either side does not parse."""
    try:
        left, right = json.loads(primary), json.loads(shadow)
    except (ValueError, RecursionError):
        return Differences(("$",))
    paths: list[str] = []
    stack: list[tuple[str, Any, Any]] = [("$", left, right)]
    visited = 0
    while stack:
        if len(paths) >= max_paths or visited >= max_nodes:
            return Differences(tuple(paths[:max_paths]), truncated=True)
        path, a, b = stack.pop()
        visited += 1
        if isinstance(a, dict) and isinstance(b, dict):
            members = [(_member(path, name), value, b.get(name, _ABSENT)) for name, value in a.items()]
            members += [(_member(path, name), _ABSENT, value) for name, value in b.items() if name not in a]
            stack.extend(reversed(members))  # reversed onto the stack: paths come out in the documents' order
        elif isinstance(a, list) and isinstance(b, list):
            common = min(len(a), len(b))
            longer = a if len(a) > len(b) else b
            for index in range(len(longer) - 1, common - 1, -1):
                stack.append((f"{path}[{index}]", _ABSENT, _ABSENT))  # an item on one side only
            stack.extend((f"{path}[{i}]", a[i], b[i]) for i in range(common - 1, -1, -1))
        elif a is _ABSENT or b is _ABSENT or isinstance(a, dict | list) or isinstance(b, dict | list) \
                or not _scalar_equal(a, b):
            paths.append(path)
    return Differences(tuple(paths))


class _Absent:
    """Stands for the member or item one side does not have."""


_ABSENT: Any = _Absent()
