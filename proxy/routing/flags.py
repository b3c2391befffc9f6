"""The flag file's value (contract §3): one frozen Flags, validated whole before anything sees it.

Every field is optional and the defaults send everything to `old` with nothing compared. The key
regexes are compiled once per file, into one matcher per list; the router only calls it. Reading
and validating the file is proxy.routing.flagfile.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from proxy.errors import ConfigError

#: Says whether a key matches any regex of one list (re.search semantics); truthy when it does.
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
    # Compiled from the pattern strings above when the value is made; None for an empty list.
    enabled_keys_search: KeySearch | None = field(init=False, repr=False, compare=False)
    disabled_keys_search: KeySearch | None = field(init=False, repr=False, compare=False)

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
        }


@dataclass(frozen=True, slots=True)
class LoadedFlags:
    flags: Flags
    digest: str  # sha256 of the file's bytes: tells a real change from a touch


def compile_key_patterns(patterns: tuple[str, ...], name: str) -> KeySearch | None:
    """One search function for a list of regexes: a single combined regex when that keeps each
    pattern's meaning, else the patterns tried in turn."""
    if not patterns:
        return None
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"{name}[{i}]: regular expression does not compile: {exc}") from None
    if len(compiled) == 1:
        return compiled[0].search
    # Numbered groups would be renumbered inside an alternation (a \1 would point elsewhere), and a
    # global inline flag such as (?i) may only open a whole pattern: keep those apart.
    if all(p.groups == 0 for p in compiled):
        try:
            return re.compile("|".join(f"(?:{p})" for p in patterns)).search
        except re.error:
            pass
    searches = tuple(p.search for p in compiled)
    return lambda key: any(search(key) for search in searches)


def is_percentage(value: object) -> TypeGuard[int | float]:
    # bool is an int in Python, but `true` is no percentage; NaN compares false both ways, so say it.
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and not (isinstance(value, float) and math.isnan(value))
        and 0 <= value <= 100
    )
