"""Key-space coverage (issue 15): the share of keys, by prefix, compared in shadow mode or verified, and when.

A key's **prefix** is the key up to and including its first ':' (`session:42` -> `session:`); a key
without one has the prefix "". Fixed rather than configurable: it is the shape of the flag file's
own examples (`^session:`), and a rule needs no setting to be read the same by every tool. At most
MAX_PREFIXES prefixes are kept apart; keys of any further prefix are counted under OTHER, so a key
space whose first segment is an id cannot grow the figures without bound.

Two sources, read together by coverage_document:
- **verify** scans both stores whole, so its record (VerifyTally) holds the number of keys of each
  prefix (in either store), how many agreed and how many differed, at the verify's time. It is the
  only source of key counts: without a verify, shares are unknown (None), never guessed.
- **shadow mode** (ShadowCoverage) remembers the distinct keys compared since the process started,
  exactly, up to MAX_TRACKED_KEYS in all (a 64-bit hash of each key, about 60 bytes a key: some
  15 MB at the bound). Past it, comparisons of keys not tracked are counted in `untracked` and the
  prefix's figure is a lower bound (`at_least: true`).

Under `turnout serve --workers N`, worker 0 adds up the workers' documents: `compared` becomes a sum
(a key compared by two workers counts twice: at most the true figure), `compared_at_least` the
largest of one worker's (at least the true figure); shares use the lower one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: Prefixes kept apart; keys of any prefix beyond them are counted under OTHER.
MAX_PREFIXES = 256
OTHER = "(other)"
#: Distinct keys shadow mode remembers in all, across prefixes.
MAX_TRACKED_KEYS = 250_000


def prefix_of(key: str) -> str:
    """The key up to and including its first ':'; "" when it has none."""
    end = key.find(":")
    return "" if end < 0 else key[:end + 1]


class ShadowCoverage:
    """The distinct keys this process compared in shadow mode, by prefix, and when each prefix last was.

    compared() is on the path of every shadow read, so a key seen before costs one dict lookup of its
    (cached) hash and one clock read; only a key's first comparison finds its prefix."""

    def __init__(self, max_keys: int = MAX_TRACKED_KEYS, max_prefixes: int = MAX_PREFIXES,
                 clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.since = clock()
        self._max_keys = max_keys
        self._max_prefixes = max_prefixes
        # A key's hash -> its prefix's figures [distinct keys, untracked comparisons, last moment].
        # Hashes, not keys: a key may be up to 1 KiB, its hash is one int. Two keys colliding in 64 bits
        # would make the figure one lower, never higher (the safe side for a coverage figure).
        self._known: dict[int, list[float]] = {}
        self._prefixes: dict[str, list[float]] = {}

    def compared(self, key: str) -> None:
        figures = self._known.get(hash(key))
        if figures is None:
            figures = self._first(key)
        figures[_LAST] = self._clock()

    def _first(self, key: str) -> list[float]:
        """A key not seen before: count it under its prefix (or as untracked, past the bound)."""
        prefix = prefix_of(key)
        figures = self._prefixes.get(prefix)
        if figures is None:
            if len(self._prefixes) >= self._max_prefixes:
                prefix = OTHER
                figures = self._prefixes.get(OTHER)
            if figures is None:
                figures = self._prefixes[prefix] = [0, 0, 0.0]
        if len(self._known) >= self._max_keys:
            figures[_UNTRACKED] += 1  # counted each time: the key cannot be told from a new one
        else:
            self._known[hash(key)] = figures
            figures[_DISTINCT] += 1
        return figures

    def document(self) -> dict[str, Any]:
        """This process's figures, by prefix (numbers only, so that workers' documents add up)."""
        return {
            "since_unix": self.since,
            "prefixes": {prefix: {"compared": int(distinct), "compared_at_least": int(distinct),
                                  "untracked": int(untracked), "last_compared_unix": last}
                         for prefix, (distinct, untracked, last) in self._prefixes.items()},
        }


_DISTINCT, _UNTRACKED, _LAST = 0, 1, 2


class VerifyTally:
    """A verify's keys by prefix: how many agreed and how many differed (missing, different or extra)."""

    def __init__(self, max_prefixes: int = MAX_PREFIXES) -> None:
        self._max_prefixes = max_prefixes
        self._agree: dict[str, int] = {}
        self._differ: dict[str, int] = {}

    def _prefix(self, key: str) -> str:
        prefix = prefix_of(key)
        if prefix in self._agree or len(self._agree) < self._max_prefixes:
            return prefix
        return OTHER

    def _count(self, key: str, agree: int, differ: int) -> None:
        prefix = self._prefix(key)
        self._agree[prefix] = self._agree.get(prefix, 0) + agree
        self._differ[prefix] = self._differ.get(prefix, 0) + differ

    def agree(self, key: str) -> None:
        self._count(key, 1, 0)

    def differ(self, key: str) -> None:
        self._count(key, 0, 1)

    def cleared(self, key: str, gone: bool = False) -> None:
        """A difference found, then cleared on a live re-check: the key agrees (or, gone from both
        stores by now, is no key at all)."""
        self._count(key, 0 if gone else 1, -1)

    def to_document(self) -> dict[str, dict[str, int]]:
        return {prefix: {"keys": agree + self._differ[prefix], "agree": agree, "differ": self._differ[prefix]}
                for prefix, agree in sorted(self._agree.items())}


def coverage_document(shadow: dict[str, Any] | None, verify: dict[str, Any] | None,
                      verify_unix: float | None) -> dict[str, Any]:
    """The coverage `turnout status` shows: per prefix, the keys the last verify counted and checked
    (and when), and the distinct keys shadow mode compared since start (with the share of the
    verify's keys and when last). Prefixes come from either source."""
    compared: dict[str, dict[str, Any]] = (shadow or {}).get("prefixes", {})
    verified: dict[str, dict[str, int]] = (verify or {}).get("prefixes") or {}
    rows = []
    for prefix in sorted(set(compared) | set(verified)):
        seen = compared.get(prefix)
        counted = verified.get(prefix)
        keys = None if counted is None else counted["keys"]
        row: dict[str, Any] = {"prefix": prefix, "keys": keys,
                               "verified": None if counted is None else {**counted, "at_unix": verify_unix}}
        if seen is None:
            row["shadow"] = None
        else:
            lower = int(seen.get("compared_at_least", seen.get("compared", 0)))
            row["shadow"] = {
                "compared": lower, "compared_at_most": int(seen.get("compared", lower)),
                "at_least": bool(seen.get("untracked")),
                "share": None if not keys else min(1.0, lower / keys),
                "last_unix": seen.get("last_compared_unix") or None,
            }
        rows.append(row)
    return {
        "prefix": "the key up to and including its first ':' ('' for a key without one)",
        "verify_unix": verify_unix if verify is not None else None,
        "verify_has_prefixes": bool(verified),
        "shadow_since_unix": (shadow or {}).get("since_unix"),
        "prefixes": rows,
    }
