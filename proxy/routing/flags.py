"""The flag file's value (contract §3): one frozen Flags, validated whole before anything sees it.

Every field is optional and the defaults send everything to `old` with nothing compared. The key
regexes are RE2 (linear time: no pattern can make a match take longer than a scan of the key) and
are compiled once per file, into one matcher per list; the router only calls it. Reading and
validating the file is proxy.routing.flagfile. `comparison_rules` (what shadow mode's comparison
lets pass, each rule owned and dated) is proxy.routing.comparisonrules; its key patterns are
compiled here with the others, one search per rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from re2 import _re2

from proxy.errors import ConfigError
from proxy.routing.comparisonrules import ComparisonRule
from proxy.routing.safetyflags import CanaryPlan, Triggers

#: Says whether a key matches any regex of one list (a match anywhere, as re.search); truthy when it does.
KeySearch = Callable[[str], object]


@dataclass(frozen=True, slots=True)
class Flags:
    revision: str = ""
    use_new_storage: bool = False
    shadow_mode_enabled: bool = False
    read_percentage: float = 0.0  # traffic_percentage.read in the file
    write_percentage: float = 0.0  # traffic_percentage.write in the file
    enabled_for_keys: tuple[str, ...] = ()
    disabled_for_keys: tuple[str, ...] = ()
    enabled_for_users: tuple[str, ...] = ()
    read_only: bool = False
    bucket_salt: str = ""
    rollback_triggers: Triggers | None = None  # None: no automatic rollback
    canary: CanaryPlan | None = None  # None: the percentages are traffic_percentage's
    comparison_rules: tuple[ComparisonRule, ...] = ()  # what shadow mode's comparison lets pass, per key
    # Compiled from the pattern strings above when the value is made; None for an empty list.
    enabled_keys_search: KeySearch | None = field(init=False, repr=False, compare=False)
    disabled_keys_search: KeySearch | None = field(init=False, repr=False, compare=False)
    #: One search per comparison rule, in the rules' order.
    comparison_searches: tuple[KeySearch, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Flags built in code (tests, tools) get the same range checks as a parsed file.
        for name, value in (("traffic_percentage.read", self.read_percentage),
                            ("traffic_percentage.write", self.write_percentage)):
            if not is_percentage(value):
                raise ConfigError(f"{name}: must be a number from 0 to 100, got {value!r}")
        object.__setattr__(self, "enabled_keys_search", compile_key_patterns(self.enabled_for_keys, "enabled_for_keys"))
        object.__setattr__(
            self, "disabled_keys_search", compile_key_patterns(self.disabled_for_keys, "disabled_for_keys")
        )
        searches = (compile_key_patterns((rule.keys,), f"comparison_rules[{i}].keys")
                    for i, rule in enumerate(self.comparison_rules))
        object.__setattr__(self, "comparison_searches", tuple(s for s in searches if s is not None))

    def to_document(self) -> dict[str, Any]:
        """The flags in the file's own shape, as `turnout status` and `check-flags --json` show them."""
        return {
            "revision": self.revision,
            "use_new_storage": self.use_new_storage,
            "shadow_mode_enabled": self.shadow_mode_enabled,
            "traffic_percentage": {"read": self.read_percentage, "write": self.write_percentage},
            "enabled_for_keys": list(self.enabled_for_keys),
            "disabled_for_keys": list(self.disabled_for_keys),
            "enabled_for_users": list(self.enabled_for_users),
            "read_only": self.read_only,
            "bucket_salt": self.bucket_salt,
            **({} if self.rollback_triggers is None else {"rollback_triggers": self.rollback_triggers.to_document()}),
            **({} if self.canary is None else {"canary": self.canary.to_document()}),
            **({"comparison_rules": [rule.to_document() for rule in self.comparison_rules]}
               if self.comparison_rules else {}),
        }


@dataclass(frozen=True, slots=True)
class LoadedFlags:
    flags: Flags
    digest: str  # sha256 of the file's bytes: tells a real change from a touch


def compile_key_patterns(patterns: tuple[str, ...], name: str) -> KeySearch | None:
    """One search function for a list of key patterns (RE2 syntax, a match anywhere in the key):
    plain literals become string tests, the rest one combined RE2 program, so a key that matches
    nothing costs a few C calls and never more than time linear in its length."""
    if not patterns:
        return None
    for i, pattern in enumerate(patterns):
        try:
            _program(pattern)
        except ValueError as exc:
            raise ConfigError(f"{name}[{i}]: {exc}") from None
    prefixes, suffixes, exact, others = _split_literals(patterns)
    checks: list[KeySearch] = []
    if exact:
        whole = frozenset(exact)
        checks.append(whole.__contains__)
    if prefixes:
        starts = tuple(prefixes)
        checks.append(lambda key: key.startswith(starts))
    if suffixes:
        ends = tuple(suffixes)
        checks.append(lambda key: key.endswith(ends))
    if others:
        checks.append(_combined_search(others))
    search = checks[0]
    for check in checks[1:]:
        search = _either(search, check)
    return search


def check_key_pattern(pattern: str) -> None:
    """Raise ValueError saying why, when pattern is no key pattern RE2 can run."""
    _program(pattern)


#: RE2 runs every pattern in time linear in the key (no backtracking, so `(a+)+$` cannot hold the
#: event loop); captures are never needed, only whether there is a match; a refused pattern is
#: reported to the operator, not logged by the C++ library.
_OPTIONS = _re2.RE2.Options()
_OPTIONS.never_capture = True
_OPTIONS.log_errors = False
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
# RE2's metacharacters; a pattern without them (apart from a leading ^ or trailing $) is a literal.
_META = frozenset("\\.+*?()|[]{}^$")


def _program(pattern: str) -> Any:
    program = _re2.RE2(pattern.encode("utf-8", "surrogatepass"), _OPTIONS)
    if not program.ok():
        reason = program.error().decode("utf-8", "replace")
        raise ValueError(f"regular expression does not compile (RE2 syntax: no backreferences or "
                         f"lookaround): {reason}")
    return program


def _split_literals(patterns: tuple[str, ...]) -> tuple[list[str], list[str], list[str], list[str]]:
    """The patterns that are `^literal`, `literal$`, `^literal$`, and all others. Under RE2, ^ and $
    (no multi-line mode) are the start and end of the key, so these are exact string tests."""
    prefixes: list[str] = []
    suffixes: list[str] = []
    exact: list[str] = []
    others: list[str] = []
    for pattern in patterns:
        head = pattern.startswith("^")
        tail = pattern.endswith("$") and len(pattern) > head
        body = pattern[head:len(pattern) - tail]
        if not _is_literal(body) or not (head or tail):
            others.append(pattern)  # a bare literal is rare enough to leave to RE2
        elif head and tail:
            exact.append(body)
        elif head:
            prefixes.append(body)
        else:
            suffixes.append(body)
    return prefixes, suffixes, exact, others


def _is_literal(text: str) -> bool:
    return text != "" and text.isprintable() and _META.isdisjoint(text)


def _combined_search(patterns: list[str]) -> KeySearch:
    # One program per alternation of up to _PER_PROGRAM patterns scans the key once for all of them.
    # RE2 has no backreferences, and an inline flag such as (?i) is scoped to its (?:...) group, so
    # each pattern keeps its meaning inside it. Compiling grows faster than the alternation (20,000
    # patterns: over a second, holding the GIL), so a long list is cut into pieces that each compile
    # in about ten milliseconds and leave the event loop its turn in between.
    pieces: list[tuple[Any, tuple[str, ...] | None]] = []
    for start in range(0, len(patterns), _PER_PROGRAM):
        piece = patterns[start:start + _PER_PROGRAM]
        try:
            programs = [(_program("|".join(f"(?:{p})" for p in piece)), piece)]
        except ValueError:
            programs = [(_program(p), [p]) for p in piece]  # the alternation outgrew RE2's memory budget
        for program, covered in programs:
            heads = [_required_head(p) for p in covered]
            pieces.append((program, tuple(heads) if all(heads) else None))
    searches = [_program_search(program, heads) for program, heads in pieces]
    if len(searches) == 1:
        return searches[0]
    every = tuple(searches)
    return lambda key: any(search(key) for search in every)


_PER_PROGRAM = 1000


def _required_head(pattern: str) -> str:
    """A start every matching key has (`^feature:[a-z]+:` needs "feature:"), or "" when there is none
    to be sure of: not anchored, an alternation anywhere, or a quantifier that may drop the last letter."""
    if not pattern.startswith("^") or "|" in pattern:
        return ""
    head = pattern[1:]
    for end, char in enumerate(head):
        if char in _META or not char.isprintable():
            head = head[:max(end - 1, 0)] if char in "*?{" else head[:end]
            break
    return head


def _program_search(program: Any, heads: tuple[str, ...] | None) -> KeySearch:
    # The extension's Match directly: the re2 package's search() wraps every call in a generator
    # and a Match object, four times the cost of the scan itself for a short key. A key without any
    # of the patterns' required starts cannot match: a startswith() saves it the encoding and the scan.
    match = program.Match

    def search(key: str) -> bool:
        text = key.encode("utf-8", "surrogatepass")
        return bool(match(_UNANCHORED, text, 0, len(text))[0][0] >= 0)

    if heads is None:
        return search
    return lambda key: key.startswith(heads) and search(key)


def _either(first: KeySearch, second: KeySearch) -> KeySearch:
    return lambda key: first(key) or second(key)


def is_percentage(value: object) -> TypeGuard[int | float]:
    # bool is an int in Python, but `true` is no percentage; NaN compares false both ways, so say it.
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and not (isinstance(value, float) and math.isnan(value))
        and 0 <= value <= 100
    )
