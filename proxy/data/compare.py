"""The comparator of shadow mode: JSON-semantic equality and the kind of each difference.

Key order and whitespace are not differences, and numbers compare as JSON numbers (`1` equals
`1.0`), but `true` is not `1`: Python's own `==` would say it is, so the comparison walks the
documents itself.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec


class Kind(enum.StrEnum):
    VALUE_MISMATCH = "value_mismatch"
    MISSING_IN_SHADOW = "missing_in_shadow"
    EXTRA_IN_SHADOW = "extra_in_shadow"
    SHADOW_ERROR = "shadow_error"


def _scalar_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def json_equal(a: Any, b: Any) -> bool:
    """Equal as JSON documents, walked with a stack of pairs rather than recursion, so a document of
    any depth (a legacy file may hold one deeper than Set accepts) is compared without a RecursionError."""
    pending = [(a, b)]
    while pending:
        x, y = pending.pop()
        if isinstance(x, dict) and isinstance(y, dict):
            if x.keys() != y.keys():
                return False
            pending.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y, strict=True))
        elif isinstance(x, dict | list) or isinstance(y, dict | list) or not _scalar_equal(x, y):
            return False
    return True


#: msgspec rather than orjson: both parse several times faster than the standard library, but orjson
#: reads an integer past 64 bits as a float, which would make two different large integers equal.
_parse = msgspec.json.Decoder().decode
#: Members sorted: two documents that write out the same are equal; the walk decides only the rest
#: (`1` against `1.0`, which write out differently and are equal as JSON numbers).
_sorted_copy = msgspec.json.Encoder(order="sorted").encode


def documents_equal(a: bytes, b: bytes) -> bool:
    if a == b:
        return True  # the common case costs one memcmp
    try:
        left, right = _parse(a), _parse(b)
    except (ValueError, RecursionError):
        # msgspec refuses what a stored document may still hold (NaN, 1e400, a lone surrogate, kept
        # by a legacy store from before the rules): the standard library reads those as Set never would.
        return documents_equal_stdlib(a, b)
    return _sorted_copy(left) == _sorted_copy(right) or json_equal(left, right)


def documents_equal_stdlib(a: bytes, b: bytes) -> bool:
    try:
        return json_equal(json.loads(a), json.loads(b))
    except (ValueError, RecursionError):
        # Not JSON, or nested past what Python's parser takes (about 1000 levels): unequal bytes of
        # such a document count as a difference, which verify reports by key and repair copies.
        return False


def compare_values(primary: bytes | None, shadow: bytes | None) -> Kind | None:
    """Get: absent on one side, or a different document."""
    if primary is None:
        return None if shadow is None else Kind.EXTRA_IN_SHADOW
    if shadow is None:
        return Kind.MISSING_IN_SHADOW
    return None if documents_equal(primary, shadow) else Kind.VALUE_MISMATCH


def compare_presence(primary: bool, shadow: bool) -> Kind | None:
    """Has and Delete's `existed`."""
    if primary == shadow:
        return None
    return Kind.MISSING_IN_SHADOW if primary else Kind.EXTRA_IN_SHADOW


@dataclass(frozen=True, slots=True)
class KeySetDifference:
    missing: int  # in the primary's listing, not in the shadow's
    extra: int
    missing_sample: tuple[str, ...]
    extra_sample: tuple[str, ...]

    @property
    def kind(self) -> Kind | None:
        if self.missing:
            return Kind.MISSING_IN_SHADOW
        return Kind.EXTRA_IN_SHADOW if self.extra else None


def compare_key_sets(primary: Iterable[str], shadow: Iterable[str], sample: int = 10) -> KeySetDifference:
    """Keys, compared as sets, with counts and bounded samples of each side's surplus."""
    primary_set, shadow_set = set(primary), set(shadow)
    missing = primary_set - shadow_set
    extra = shadow_set - primary_set
    return KeySetDifference(len(missing), len(extra), tuple(sorted(missing)[:sample]), tuple(sorted(extra)[:sample]))
