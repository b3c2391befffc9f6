"""The router: which backend serves one operation, and why. Pure: no I/O, no clock, no randomness.

`Router(flags, override).route(op, key, caller)` follows contract §3, first rule that applies:

    override                          -> its backend   (override)
    use_new_storage: false            -> old           (kill_switch)
    key matches disabled_for_keys     -> old           (disabled_key)
    caller in enabled_for_users       -> new           (user)
    key matches enabled_for_keys      -> new           (key_pattern)
    bucket(key) < percentage * 100    -> new           (percentage; read % for get/has/keys, write % for set/delete)
    otherwise                         -> old           (default)

Keys has no single key: a listing is routed with its prefix as the key, so `Keys("session:")` goes
where the rules send a key called `session:` (a key pattern such as `^session:` then covers both the
keys and their listing; the listing of everything, prefix "", goes where a key "" would).

Everything that does not depend on the operation is worked out once per flag set (and override):
the regexes are compiled by the Flags value, users are a set, the percentages are integer bucket
thresholds, and every Decision that can be returned is made ahead, so a call does a set lookup, at
most two regex searches, and one SHA-256 only when a percentage lies strictly between 0 and 100.
"""

from __future__ import annotations

import decimal
import enum
import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

from proxy.routing.flags import Flags

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
    KEYS = "keys"  # routed with the prefix as its key

    @property
    def is_write(self) -> bool:
        return self in _WRITES


_WRITES = frozenset({Op.SET, Op.DELETE})
#: The operations as module constants, for the hot paths: Python 3.11's EnumType has a __getattr__,
#: so each `Op.SET` is looked up the slow way (about 70 ns more than a global: bench/handlers.py).
GET, SET, HAS, DELETE, KEYS = Op.GET, Op.SET, Op.HAS, Op.DELETE, Op.KEYS


@dataclass(frozen=True, slots=True)
class Decision:
    primary: Route
    secondary: Route  # the other backend: the shadow in shadow mode, the replication target otherwise
    compare: bool  # shadow mode: run on secondary too and compare
    reason: Reason
    #: The key's bucket when the route turned on it (a percentage strictly between 0 and 100), else
    #: None: the fast paths do not hash. `bucket(key, salt)` gives it any time.
    bucket: int | None = None
    #: Writes must reach the secondary too. Only the kill switch says no: with it, new is out of
    #: use (no shadow calls, no replication) until the switch is turned back.
    replicate: bool = True


@dataclass(frozen=True, slots=True)
class Trip:
    """A rollback trigger that tripped: its name, the figure measured over the window, its threshold."""

    name: str  # error_rate, latency_increase, discrepancy_rate, or canary_abort (an operator's abort)
    measured: float
    threshold: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's word above the flag file: everything goes to `route` until cleared. An automatic
    rollback is one too, set by the proxy itself, with the trigger that tripped."""

    route: Route
    reason: str
    since: float  # unix time it was set: shown by status, never read by the router
    automatic: bool = False
    trigger: Trip | None = None


def bucket(key: str, salt: str) -> int:
    """First 8 bytes of SHA-256(salt + ":" + key), big-endian unsigned, modulo 10000 (contract §3)."""
    first_8: int = _first_8_bytes(_sha256(f"{salt}:{key}".encode()).digest())[0]
    return first_8 % BUCKETS


_sha256 = hashlib.sha256
_first_8_bytes = struct.Struct(">Q").unpack_from  # big-endian unsigned 64 bits; faster than int.from_bytes


def threshold(percentage: float) -> int:
    """The number of buckets a percentage sends to new: bucket < percentage * 100 <=> bucket < threshold.

    The percentage is taken as the decimal the operator wrote (12.5 -> 1250, 1.1 -> 110), not as the
    nearest binary float times 100 (1.1 * 100 = 110.00000000000001, which would let bucket 110 in).
    """
    exact = decimal.Decimal(repr(float(percentage))) * 100
    return min(BUCKETS, max(0, math.ceil(exact)))


class _Shares:
    """The percentage rule for one kind of operation: the threshold, and a Decision per bucket made
    on first use (the same bucket always gives the same Decision object)."""

    __slots__ = ("_compare", "_decisions", "fixed", "threshold")

    def __init__(self, threshold: int, compare: bool) -> None:
        self.threshold = threshold
        self._compare = compare
        self._decisions: list[Decision | None] = [None] * BUCKETS if 0 < threshold < BUCKETS else []
        #: At 0 % or 100 % the bucket cannot change the answer, so no key is hashed.
        self.fixed: Decision | None = None
        if threshold == 0:
            self.fixed = Decision(Route.OLD, Route.NEW, compare, Reason.DEFAULT)
        elif threshold == BUCKETS:
            self.fixed = Decision(Route.NEW, Route.OLD, compare, Reason.PERCENTAGE)

    def decide(self, b: int) -> Decision:
        decision = self._decisions[b]
        if decision is None:
            if b < self.threshold:
                decision = Decision(Route.NEW, Route.OLD, self._compare, Reason.PERCENTAGE, b)
            else:
                decision = Decision(Route.OLD, Route.NEW, self._compare, Reason.DEFAULT, b)
            self._decisions[b] = decision  # a race between two callers writes equal values
        return decision


class Router:
    __slots__ = (
        "_disabled",
        "_disabled_decision",
        "_enabled",
        "_enabled_decision",
        "_fixed",
        "_salt_prefix",
        "_shares",
        "_user_decision",
        "_users",
        "by_caller",
        "flags",
        "override",
    )

    def __init__(self, flags: Flags, override: Override | None = None) -> None:
        self.flags = flags
        self.override = override
        compare = flags.shadow_mode_enabled
        self._disabled = flags.disabled_keys_search
        self._enabled = flags.enabled_keys_search
        self._users = frozenset(flags.enabled_for_users)
        self._salt_prefix = f"{flags.bucket_salt}:".encode()
        self._disabled_decision = Decision(Route.OLD, Route.NEW, compare, Reason.DISABLED_KEY)
        self._user_decision = Decision(Route.NEW, Route.OLD, compare, Reason.USER)
        self._enabled_decision = Decision(Route.NEW, Route.OLD, compare, Reason.KEY_PATTERN)
        reads = _Shares(threshold(flags.read_percentage), compare)
        writes = _Shares(threshold(flags.write_percentage), compare)
        self._shares = {op: writes if op.is_write else reads for op in Op}
        self._fixed: Decision | None = None
        if override is not None:
            self._fixed = Decision(override.route, override.route.other, compare, Reason.OVERRIDE)
        elif not flags.use_new_storage:
            self._fixed = Decision(Route.OLD, Route.NEW, compare=False, reason=Reason.KILL_SWITCH, replicate=False)
        #: Whether the caller's name can change a route: when not, the server need not read it.
        self.by_caller = self._fixed is None and bool(self._users)

    def route(self, op: Op, key: str, caller: str | None = None) -> Decision:
        """The backend for one operation; for Keys, `key` is the prefix (see the module docstring)."""
        if self._fixed is not None:
            return self._fixed
        if self._disabled is not None and self._disabled(key):
            return self._disabled_decision
        if caller is not None and caller in self._users:
            return self._user_decision
        if self._enabled is not None and self._enabled(key):
            return self._enabled_decision
        shares = self._shares[op]
        if shares.fixed is not None:
            return shares.fixed
        digest = _sha256(self._salt_prefix + key.encode()).digest()
        return shares.decide(_first_8_bytes(digest)[0] % BUCKETS)  # bucket(key, salt), inlined


def explain(router: Router, op: Op, key: str, user: str | None) -> dict[str, Any]:
    """Where one operation goes under router, and why: the fields of the admin API's RouteResponse
    (`turnout route`), the key's bucket always included."""
    decision = router.route(op, key, user)
    return {"route": decision.primary.value, "reason": decision.reason.value,
            "bucket": decision.bucket if decision.bucket is not None else bucket(key, router.flags.bucket_salt),
            "flags_revision": router.flags.revision, "shadow": decision.compare,
            "secondary": decision.secondary.value}
