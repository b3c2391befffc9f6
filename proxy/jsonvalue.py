"""What a stored value may be: one JSON document that every store holds and gives back equal.

The one place for these rules, so Set (which refuses a value) and validate (which lists what is
already stored) agree: at most MAX_DEPTH arrays and objects inside each other, no member name twice
in one object, no lone surrogate escape in a string, no number out of a double's range (NaN and
Infinity are not JSON at all). Nothing here recurses, so a document of any depth is measured and
walked without a RecursionError.
"""

from __future__ import annotations

import decimal
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import orjson

#: Deeper than any real document (Ruby's JSON refuses past 100 levels, serde_json past 128, .NET past
#: 64), and far below where Python's json or a recursive walk runs out of stack (about 1000 frames, so
#: about 330 levels for a walk of three frames a level).
MAX_DEPTH = 100
#: Past MAX_DEPTH takes that many openers and as many closers: a value this short is never too deep.
SHALLOW_BYTES = 2 * MAX_DEPTH + 1

TOO_DEEP = "too_deep"
DUPLICATE_MEMBER = "duplicate_member"
NOT_UNICODE = "value_not_unicode"
NOT_FINITE = "nan_or_infinity"
NOT_JSON = "not_json"
INVALID_UTF8 = "invalid_utf8"

TOO_DEEP_DETAIL = f"nesting deeper than {MAX_DEPTH} levels of arrays and objects"
NOT_UNICODE_DETAIL = "a string holds a lone surrogate escape (\\ud800-\\udfff without its pair), which is not Unicode"
NOT_FINITE_DETAIL = "a number out of range of a double (1e400 reads as Infinity); NaN and Infinity are not JSON numbers"


def duplicate_detail(name: str) -> str:
    return f"member {name!r} appears more than once; a JSON parser keeps only the last"


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a document cannot be stored: kind is validate's finding name, detail the message."""

    kind: str
    detail: str


class DocumentError(ValueError):
    """The bytes are not a document every store can hold; the message is safe to show the caller."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail)
        self.problem = problem


_STEP = [0] * 256
for _opener in b"[{":
    _STEP[_opener] = 1
for _closer in b"]}":
    _STEP[_closer] = -1
_BRACKETS_AND_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')
_SEPARATORS_AND_QUOTES = bytes(b for b in range(256) if b not in b'":')


def _outside_strings(raw: bytes, others: bytes) -> bytes:
    """The characters of the JSON text raw that others does not delete and that lie outside its strings.

    Linear, at C speed: escape pairs go first (escaped backslashes before escaped quotes, so `\\\\"`
    keeps its closing quote), then every other character, then each `""` (an empty string, or the
    end of one string beside the start of the next: either way only string content lies between
    the quotes left), then what the remaining quotes enclose."""
    # `needle in raw` first tries the needle as an integer and builds (then drops) a TypeError with a
    # formatted message each time (CPython 3.11's bytes_contains); find is the same test without it,
    # here and in check_document, which every Set runs.
    if raw.find(b"\\") >= 0:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = raw.translate(None, others).replace(b'""', b"")
    if kept.find(b'"') >= 0:
        kept = b"".join(kept.split(b'"')[::2])
    return kept


def _depth(brackets: bytes) -> int:
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def nesting_depth(raw: bytes) -> int:
    """How many arrays and objects the deepest point of the JSON text raw sits inside. Text that is
    not JSON gets some number; the parser refuses it afterwards."""
    return _depth(_outside_strings(raw, _BRACKETS_AND_QUOTES))


def too_deep(raw: bytes) -> bool:
    if len(raw) <= SHALLOW_BYTES:
        return False
    # Fewer opening brackets than the limit, counting those inside strings too, cannot nest deeper:
    # most values end here after two counts.
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    brackets = _outside_strings(raw, _BRACKETS_AND_QUOTES)
    # Each round drops the innermost `[]` and `{}`: one or two levels. Real documents, a few levels
    # deep, are empty within a few rounds; summing the brackets one by one costs far more.
    inner = brackets
    for _ in range(MAX_DEPTH // 2):
        if not inner:
            return False
        inner = inner.replace(b"[]", b"").replace(b"{}", b"")
    return bool(inner) and _depth(brackets) > MAX_DEPTH


def _not_json_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


#: Parses a JSON number in C and traps one of 1e308 or more; the largest double is about 1.8e308, so
#: a trapped number is checked again exactly (_finite). A Python hook on every float costs three times as much.
_below_1e308 = decimal.Context(Emax=307, traps=[decimal.Overflow]).create_decimal


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise DocumentError(Problem(NOT_FINITE, NOT_FINITE_DETAIL))
    return number


def _may_overflow(text: str) -> bool:
    """False only when no number in text can reach 1e308: without an `e` or `E`, a number needs more
    than 307 digits before its point."""
    return "e" in text or "E" in text or len(text) > 307


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise DocumentError(Problem(DUPLICATE_MEMBER, duplicate_detail(name)))
            seen.add(name)
    return members


#: A \u escape in the surrogate range, high (d800-dbff) or low (dc00-dfff).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _objects(text: str, float_hook: Callable[[str], object] | None) -> list[dict[str, Any]]:
    """Parse text, handing each object (members already merged by the parser) to a list's append:
    no Python frame per object, and the members kept can be counted against those written."""
    objects: list[dict[str, Any]] = []
    try:
        # A str, not the bytes: json.loads would take bytes that start with a NUL for UTF-16.
        json.loads(text, parse_constant=_not_json_constant, object_hook=objects.append, parse_float=float_hook)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, DocumentError):
            raise
        raise DocumentError(Problem(NOT_JSON, f"not one JSON document ({exc})")) from None
    return objects


def check_document(raw: bytes) -> None:
    """Raise DocumentError unless raw is one JSON document in UTF-8 that every store holds.

    The hot path of Set. orjson parses several times faster than the standard library, and
    refuses everything the rules refuse except duplicate members and nesting past MAX_DEPTH (it
    stops at 1024): invalid UTF-8, text that is not one JSON document, NaN and Infinity, a number
    out of a double's range, a lone surrogate escape. So a value orjson takes, not too deep, whose
    member separators all survive its parse (a parser keeps the last of a duplicated name, so a
    duplicate's separator is lost: it is missing from the copy written out) is a good document; any
    other goes to check_exactly, which names the problem, or accepts what orjson alone refuses
    (an integer too long for a double, which Python keeps whole).
    """
    if len(raw) <= SHALLOW_BYTES or not too_deep(raw):  # too_deep's first test, in line for short values
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            written = raw.count(b":")
            if not written:
                return
            # An object whose colon bytes are as many as the members it kept lost none to a duplicate:
            # the members written, at every level, are the colons outside strings, so at most the colon
            # bytes and at least the members kept at the top; equal ends, so no nested member and no
            # duplicate. Flat records, the usual value, end here without the copy written out below.
            if type(parsed) is dict and written == len(parsed):
                return
            # Inside strings, colons are text that the copy written out holds as written, unless an
            # escape spells one (\u003a): without such an escape, a copy with as many colons lost no member.
            kept = orjson.dumps(parsed)
            if written == kept.count(b":") and (raw.find(b"\\") < 0 or raw.find(b"\\u003") < 0):
                return
            if _separators(raw) == _separators(kept):
                return
    check_exactly(raw)


def _separators(text: bytes) -> int:
    """The members a JSON text writes: outside strings, every colon separates a member from its name."""
    return _outside_strings(text, _SEPARATORS_AND_QUOTES).count(b":")


def check_exactly(raw: bytes) -> None:
    """Raise DocumentError unless raw is one JSON document in UTF-8 that every store holds, naming its
    problem: the standard library's parser with the rules around it.

    What costs is skipped where the bytes rule the problem out: the depth
    scan when there are few brackets, the search for the duplicate member's name when the members
    the parser kept add up to the colons written, the exact range check of a number unless it
    reaches 1e308, the walk for lone surrogates unless a `\\ud800`-`\\udfff` escape is there.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(Problem(INVALID_UTF8, f"not UTF-8 ({exc.reason} at byte {exc.start})")) from None
    if too_deep(raw):
        raise DocumentError(Problem(TOO_DEEP, TOO_DEEP_DETAIL))
    try:
        objects = _objects(text, _below_1e308 if _may_overflow(text) else None)
    except decimal.Overflow:
        objects = _objects(text, _finite)
    if objects:
        members = sum(map(len, objects))
        if members != raw.count(b":") and members != _outside_strings(raw, _SEPARATORS_AND_QUOTES).count(b":"):
            json.loads(text, object_pairs_hook=_unique_members)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        problem = value_problem(json.loads(text))
        if problem is not None:
            raise DocumentError(problem)


def _lone_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def value_problem(value: Any) -> Problem | None:
    """The first problem of a parsed document, walked without recursion: nesting past MAX_DEPTH,
    a member name the parser saw twice (an object with a `duplicates` list, see validate), a lone
    surrogate in a string or member name, a number that is not finite."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, enclosing = stack.pop()
        if isinstance(item, str):
            if _lone_surrogate(item):
                return Problem(NOT_UNICODE, NOT_UNICODE_DETAIL)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return Problem(NOT_FINITE, NOT_FINITE_DETAIL)
        elif isinstance(item, dict | list):
            if enclosing >= MAX_DEPTH:
                return Problem(TOO_DEEP, TOO_DEEP_DETAIL)
            if isinstance(item, list):
                stack.extend((member, enclosing + 1) for member in item)
                continue
            for name in getattr(item, "duplicates", ()):
                return Problem(DUPLICATE_MEMBER, duplicate_detail(name))
            for name, member in item.items():
                if _lone_surrogate(name):
                    return Problem(NOT_UNICODE, NOT_UNICODE_DETAIL)
                stack.append((member, enclosing + 1))
    return None
