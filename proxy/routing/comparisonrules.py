"""The flag file's `comparison_rules` (issue 15): per key pattern, what shadow mode's comparison lets pass.

```yaml
comparison_rules:
  - keys: '^session:'                        # RE2, searched anywhere in the key (as enabled_for_keys)
    ignore_fields: ['$.updated_at', '$.meta.etag', '$.items[*].seen']
    numeric_tolerance: 0.001                 # absolute: |a - b| <= 0.001 counts as equal
    owner: payments-team                     # required: who answers for the rule
    expires: 2026-12-31                      # required: the last day (UTC) the rule applies
    reason: clock skew between stores        # optional
```

An ignore rule that nobody reviews hides real differences for ever, so every rule names its owner
and the last day it applies; from the next day (00:00 UTC) on it never applies, and status shows it
as expired, with its owner, until someone removes it from the file. A file with an expired rule is
still valid: refusing it would keep the previous flags in force, rule and all.

Choices where the issue is silent:
- Field paths are written as the discrepancy records show them (proxy.data.valuediff: `$.a.b`,
  `$["odd key"]`, `$.list[0]`), so a path can be copied from a record into a rule; `[*]` stands for
  every item of a list. `$` alone (the whole document) is refused: that rule would excuse anything.
- `numeric_tolerance` is absolute, the same figure for every number of the document (0: none).
- For a key, the first rule in file order that matches it and has not expired is the one applied;
  rules are never combined, so each hit belongs to exactly one rule.
- Rules apply to shadow mode's Get comparison only. `turnout verify` still reports every byte of
  difference: a repair copies documents whole, and a verify that hid differences could not say the
  stores agree.

The values here check themselves, so a rule built in code is held to the file's rules; parsing them
with line numbers is proxy.routing.flagfile's.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import ConfigError

#: The fields of one rule, as the flag file spells them.
RULE_FIELDS = frozenset({"keys", "ignore_fields", "numeric_tolerance", "owner", "expires", "reason"})
#: The largest tolerance accepted: beyond it a "tolerance" says the numbers are not compared at all.
MAX_TOLERANCE = 1e12

#: A segment of a field path: a member name, a list index, or every item of a list.
Segment = str | int


class _Every:
    """`[*]`: any item of a list."""

    def __repr__(self) -> str:
        return "[*]"


EVERY: Any = _Every()

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INDEX = re.compile(r"\[(0|[1-9][0-9]*)\]")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def parse_field_path(path: str) -> tuple[Any, ...]:
    """The segments of `$.a["b c"][0][*]`; ValueError saying why when it is no such path."""
    if not path.startswith("$"):
        raise ValueError(f"must be a path from the document's root such as $.updated_at, got {path!r}")
    segments: list[Any] = []
    position = 1
    decoder = json.JSONDecoder()
    while position < len(path):
        rest = path[position:]
        if rest.startswith("."):
            name = _NAME.match(path, position + 1)
            if name is None:
                raise ValueError(f"{path!r}: after '.' comes a member name (letters, digits, _); "
                                 f"write others as [\"name\"]")
            segments.append(name.group())
            position = name.end()
        elif rest.startswith("[*]"):
            segments.append(EVERY)
            position += 3
        elif rest.startswith('["'):
            try:
                name_text, end = decoder.raw_decode(path, position + 1)
            except ValueError:
                raise ValueError(f"{path!r}: a [\"name\"] member must hold a JSON string") from None
            if not isinstance(name_text, str) or not path.startswith("]", end):
                raise ValueError(f"{path!r}: a [\"name\"] member must hold a JSON string and end in ]")
            segments.append(name_text)
            position = end + 1
        elif index := _INDEX.match(path, position):
            segments.append(int(index.group(1)))
            position = index.end()
        else:
            raise ValueError(f"{path!r}: unexpected {rest[:10]!r} (segments are .name, [\"name\"], [0] or [*])")
    if not segments:
        raise ValueError("'$' is the whole document: a rule ignoring it would excuse every difference")
    return tuple(segments)


def parse_expiry(value: object, field_name: str) -> dt.date:
    """The date of `expires: 2026-12-31` (a string under YAML 1.2's scalars); ConfigError otherwise."""
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str) or not _DATE.match(value):
        raise ConfigError(f"{field_name}: must be a date such as 2026-12-31, got {value!r}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"{field_name}: must be a date such as 2026-12-31, got {value!r} ({exc})") from None


@dataclass(frozen=True, slots=True)
class ComparisonRule:
    """One entry of `comparison_rules`. `keys` is checked by the Flags holding the rule (its RE2 search)."""

    keys: str
    owner: str
    expires: dt.date
    ignore_fields: tuple[str, ...] = ()
    numeric_tolerance: float = 0.0
    reason: str = ""
    #: The ignored paths, parsed once; and the first moment (unix seconds) the rule no longer applies.
    ignored: tuple[tuple[Any, ...], ...] = field(init=False, repr=False, compare=False)
    expires_at: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.owner, str) or not self.owner.strip():
            raise ConfigError("owner: is required: who answers for the rule (a team or a person)")
        if not isinstance(self.expires, dt.date):
            raise ConfigError(f"expires: must be a date such as 2026-12-31, got {self.expires!r}")
        tolerance = self.numeric_tolerance
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not (
                0 <= tolerance <= MAX_TOLERANCE) or (isinstance(tolerance, float) and math.isnan(tolerance)):
            raise ConfigError(f"numeric_tolerance: must be a number from 0 to {MAX_TOLERANCE:g}, got {tolerance!r}")
        object.__setattr__(self, "numeric_tolerance", float(tolerance))
        parsed = []
        for i, path in enumerate(self.ignore_fields):
            try:
                parsed.append(parse_field_path(path))
            except ValueError as exc:
                raise ConfigError(f"ignore_fields[{i}]: {exc}") from None
        if not parsed and not self.numeric_tolerance:
            raise ConfigError("ignore_fields: a rule needs ignore_fields or a numeric_tolerance above 0, "
                              "or it changes nothing")
        object.__setattr__(self, "ignored", tuple(parsed))
        # The whole of the `expires` day still counts (UTC): a rule "until 2026-12-31" applies that day.
        end = dt.datetime.combine(self.expires + dt.timedelta(days=1), dt.time(), dt.UTC)
        object.__setattr__(self, "expires_at", end.timestamp())

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def to_document(self) -> dict[str, Any]:
        """The rule in the file's own shape."""
        doc: dict[str, Any] = {"keys": self.keys}
        if self.ignore_fields:
            doc["ignore_fields"] = list(self.ignore_fields)
        if self.numeric_tolerance:
            doc["numeric_tolerance"] = self.numeric_tolerance
        doc["owner"] = self.owner
        doc["expires"] = self.expires.isoformat()
        if self.reason:
            doc["reason"] = self.reason
        return doc
