"""The router: which backend serves one operation, and why. Pure: no I/O, no clock, no randomness.

Built once per flag set (and operator override), so each call does only what depends on the
operation: a set lookup, at most two regex searches, and one SHA-256 when a percentage is between 0
and 100. The same inputs always give the same Decision, so it can be tested exhaustively and
explained (`turnout route KEY`).
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass

from proxy.flags import Flags

BUCKETS = 10_000


class Route(enum.StrEnum):
    OLD = "old"
    NEW = "new"

    @property
    def other(self) -> Route:
        return Route.NEW if self is Route.OLD else Route.OLD


class Reason(enum.StrEnum):
    KILL_SWITCH = "kill_switch"
    DISABLED_KEY = "disabled_key"
    USER = "user"
    KEY_PATTERN = "key_pattern"
    PERCENTAGE = "percentage"
    DEFAULT = "default"
    OVERRIDE = "override"


class Op(enum.StrEnum):
    GET = "get"
    SET = "set"
    HAS = "has"
    DELETE = "delete"
    KEYS = "keys"

    @property
    def is_write(self) -> bool:
        return self in (Op.SET, Op.DELETE)


@dataclass(frozen=True, slots=True)
class Decision:
    primary: Route
    secondary: Route
    compare: bool  # shadow mode: run on secondary too and compare
    reason: Reason
    #: Writes must reach the secondary too. Only the kill switch says no: with it, new is out of
    #: use (no shadow calls, no replication) until the switch is turned back.
    replicate: bool = True


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's word above the flag file: everything goes to `route` until cleared."""

    route: Route
    reason: str
    since: float


def bucket(key: str, salt: str) -> int:
    """First 8 bytes of SHA-256(salt + ":" + key), big-endian unsigned, modulo 10000 (contract §3)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class _AnyOf:
    """Does any of the patterns match (re.search)? One combined regex when the patterns allow it."""

    __slots__ = ("_compiled",)

    def __init__(self, patterns: tuple[str, ...]) -> None:
        try:
            self._compiled = [re.compile("|".join(f"(?:{p})" for p in patterns))]
        except re.error:
            # A pattern with global inline flags such as (?i) cannot sit inside an alternation.
            self._compiled = [re.compile(p) for p in patterns]

    def search(self, key: str) -> bool:
        return any(pattern.search(key) for pattern in self._compiled)


def _any_of(patterns: tuple[str, ...]) -> _AnyOf | None:
    return _AnyOf(patterns) if patterns else None


class Router:
    def __init__(self, flags: Flags, override: Override | None = None) -> None:
        self.flags = flags
        self.override = override
        self._disabled = _any_of(flags.disabled_for_keys)
        self._enabled = _any_of(flags.enabled_for_keys)
        self._users = frozenset(flags.enabled_for_users)
        # bucket < percentage * 100, compared as a float so decimals (12.5 %) are exact.
        self._read_threshold = flags.read_percentage * 100
        self._write_threshold = flags.write_percentage * 100
        compare = flags.shadow_mode_enabled
        self._decisions = {
            (route, reason): Decision(route, route.other, compare, reason) for route in Route for reason in Reason
        }
        self._decisions[Route.OLD, Reason.KILL_SWITCH] = Decision(
            Route.OLD, Route.NEW, compare=False, reason=Reason.KILL_SWITCH, replicate=False
        )
        self._fixed: Decision | None = None
        if override is not None:
            self._fixed = self._decisions[override.route, Reason.OVERRIDE]
        elif not flags.use_new_storage:
            self._fixed = self._decisions[Route.OLD, Reason.KILL_SWITCH]

    def route(self, op: Op, key: str, caller: str | None = None) -> Decision:
        """For Keys, `key` is the prefix: a listing is routed like a key that is its prefix."""
        if self._fixed is not None:
            return self._fixed
        if self._disabled is not None and self._disabled.search(key):
            return self._decisions[Route.OLD, Reason.DISABLED_KEY]
        if caller is not None and caller in self._users:
            return self._decisions[Route.NEW, Reason.USER]
        if self._enabled is not None and self._enabled.search(key):
            return self._decisions[Route.NEW, Reason.KEY_PATTERN]
        threshold = self._write_threshold if op.is_write else self._read_threshold
        if threshold >= BUCKETS or (threshold > 0 and bucket(key, self.flags.bucket_salt) < threshold):
            return self._decisions[Route.NEW, Reason.PERCENTAGE]
        return self._decisions[Route.OLD, Reason.DEFAULT]
