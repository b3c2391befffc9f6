"""Applying the flag file's comparison rules (proxy.routing.comparisonrules) to two documents that
differ, and counting each rule's hits.

A rule is looked at only once the comparison has found two documents different (compare.py's byte
test, then its canonical one): an agreeing Get, the common case, never reaches this module. For the
key, the first rule in file order that matches it and has not expired is applied; the documents are
then walked together, skipping the ignored paths and taking numbers within the tolerance as equal.
A hit is a comparison that rule turned from a difference into an agreement.

The walk is bounded as valuediff's is (a stack of our own, MAX_NODES nodes at most): two documents
too large to walk whole stay a difference, so no rule can excuse what it never looked at.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec

from proxy.data.valuediff import MAX_NODES
from proxy.routing.comparisonrules import EVERY, ComparisonRule
from proxy.routing.flags import Flags

#: A trie of ignored paths: each segment leads to the rest, IGNORED where a path ends (all below it).
Trie = dict[Any, Any]


class _Ignored:
    def __repr__(self) -> str:
        return "IGNORED"


IGNORED: Any = _Ignored()
_EMPTY: Trie = {}

_parse = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class Applied:
    """The rule applied to one difference: its place in the file, and whether it excused it."""

    index: int
    rule: ComparisonRule
    excused: bool

    def note(self) -> str:
        """What a discrepancy record says of a rule that applied and still left a difference."""
        return (f"comparison rule {self.index} ({self.rule.keys!r}, owner {self.rule.owner}) applied; "
                f"a difference remains outside its ignored fields and tolerance")


class RuleHits:
    """How many differences each rule excused in this process. Counted by the rule's whole value, so
    a rule keeps its count across reloads of an unchanged file, and an edited rule starts at zero."""

    def __init__(self) -> None:
        self._hits: Counter[ComparisonRule] = Counter()

    def of(self, rule: ComparisonRule) -> int:
        return self._hits[rule]

    def apply(self, flags: Flags, key: str, primary: bytes, shadow: bytes, now: float | None = None) -> Applied | None:
        """The rule that applies to key, and whether the two (differing) documents agree under it;
        None when no live rule matches the key."""
        found = rule_for(flags, key, time.time() if now is None else now)
        if found is None:
            return None
        index, rule = found
        excused = equal_under(rule, primary, shadow)
        if excused:
            self._hits[rule] += 1
        return Applied(index, rule, excused)

    def by_index(self, flags: Flags) -> dict[str, int]:
        """The hits of the rules in force, keyed by their place in the file as text: numbers only, so
        that worker 0 adds up the workers' hits rule by rule (proxy.workers.relay)."""
        return {str(i): self._hits[rule] for i, rule in enumerate(flags.comparison_rules)}


def rules_document(flags: Flags, hits: dict[str, int], now: float | None = None) -> list[dict[str, Any]]:
    """The rules in force as status shows them: each in the file's shape, its place, whether it has
    expired (then it no longer applies, and someone should remove it) and its hits."""
    at = time.time() if now is None else now
    return [{"rule": i, **rule.to_document(), "expired": rule.expired(at), "hits": int(hits.get(str(i), 0))}
            for i, rule in enumerate(flags.comparison_rules)]


def rule_for(flags: Flags, key: str, now: float) -> tuple[int, ComparisonRule] | None:
    """The first rule, in file order, that matches key and has not expired."""
    for index, (rule, search) in enumerate(zip(flags.comparison_rules, flags.comparison_searches, strict=True)):
        if not rule.expired(now) and search(key):
            return index, rule
    return None


def equal_under(rule: ComparisonRule, primary: bytes, shadow: bytes) -> bool:
    """Whether the documents agree once the rule's ignored paths are set aside and its tolerance
    allowed; False when either does not parse or they are too large to walk whole."""
    try:
        left, right = _load(primary), _load(shadow)
    except (ValueError, RecursionError):
        return False
    tolerance = rule.numeric_tolerance
    stack: list[tuple[Any, Any, Trie]] = [(left, right, _trie(rule.ignored))]
    visited = 0
    while stack:
        visited += 1
        if visited > MAX_NODES:
            return False
        a, b, ignored = stack.pop()
        if isinstance(a, dict) and isinstance(b, dict):
            for name in a.keys() | b.keys():
                below = ignored.get(name, _EMPTY)
                if below is IGNORED:
                    continue
                if name not in a or name not in b:
                    return False
                stack.append((a[name], b[name], below))
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return False
            for index, (x, y) in enumerate(zip(a, b, strict=True)):
                below = _item(ignored, index)
                if below is not IGNORED:
                    stack.append((x, y, below))
        elif isinstance(a, dict | list) or isinstance(b, dict | list) or not _scalars_close(a, b, tolerance):
            return False
    return True


def _load(document: bytes) -> Any:
    try:
        return _parse(document)
    except msgspec.DecodeError:
        # What msgspec refuses but a legacy store may hold (NaN, 1e400): as compare.py, the standard library.
        return json.loads(document)


def _scalars_close(a: Any, b: Any, tolerance: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if a == b:
            return True
        try:
            return bool(tolerance) and abs(a - b) <= tolerance
        except OverflowError:  # a 400-digit integer beside a float: no tolerance makes them close
            return False
    return type(a) is type(b) and a == b


@functools.lru_cache(maxsize=256)
def _trie(paths: tuple[tuple[Any, ...], ...]) -> Trie:
    """The ignored paths as a trie, once per rule (the rules' parsed paths are hashable tuples)."""
    root: Trie = {}
    for path in paths:
        node = root
        for segment in path[:-1]:
            child = node.get(segment)
            if child is IGNORED:
                break  # a shorter path already ignores everything below
            node = node.setdefault(segment, {})
        else:
            node[path[-1]] = IGNORED
    return root


def _item(ignored: Trie, index: int) -> Any:
    """What is ignored below a list's item: its own index's paths and those of [*], together."""
    own, every = ignored.get(index, _EMPTY), ignored.get(EVERY, _EMPTY)
    if own is IGNORED or every is IGNORED:
        return IGNORED
    if not own or not every:
        return own or every
    return _merged(own, every)


def _merged(first: Trie, second: Trie) -> Trie:
    merged = dict(first)
    for segment, below in second.items():
        mine = merged.get(segment)
        if mine is None or below is IGNORED:
            merged[segment] = below
        elif mine is not IGNORED:
            merged[segment] = _merged(mine, below)
    return merged
