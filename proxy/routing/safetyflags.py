"""The flag file's safety fields (contract §3): `rollback_triggers` and `canary`, as frozen values.

They sit in the flag file beside the routes because an operator steers a migration from that one
file: the thresholds that send everything back to old, and the percentages a canary walks through.
Parsing them (with the file's line numbers) is proxy.routing.flagfile's; the values here check
their own ranges, so that one built in code (a test, a tool) is held to the same rules.

Choices where the contract is silent:
- A trigger that the file does not name is not evaluated: an operator opts in to each one. `window`
  defaults to 60 s and `min_calls` to 100, the plan's figures.
- `canary.interval` defaults to 10 minutes; `steps` is required, strictly increasing, each above 0
  and at most 100.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from proxy.errors import ConfigError

DEFAULT_WINDOW_S = 60.0
DEFAULT_MIN_CALLS = 100
DEFAULT_CANARY_INTERVAL_S = 600.0
#: A window or interval shorter than the guard's evaluation period could never be judged whole; one
#: longer than a day holds figures nobody would act on.
MIN_DURATION_S = 1.0
MAX_DURATION_S = 86_400.0

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True, slots=True)
class Triggers:
    """`rollback_triggers`: crossing any one sends everything to old. None: that trigger is off."""

    error_rate: float | None = None  # share of new's calls that failed in the window
    latency_increase: float | None = None  # new's p99 above old's p99 by more than this share
    discrepancy_rate: float | None = None  # discrepancies over compared operations in the window
    window_s: float = DEFAULT_WINDOW_S
    min_calls: int = DEFAULT_MIN_CALLS

    def __post_init__(self) -> None:
        for name in ("error_rate", "discrepancy_rate"):
            value = getattr(self, name)
            if value is not None and not _is_number(value, 0.0, 1.0):
                raise ConfigError(f"rollback_triggers.{name}: must be a share from 0 to 1, got {value!r}")
        if self.latency_increase is not None and not _is_number(self.latency_increase, 0.0, 1000.0):
            raise ConfigError("rollback_triggers.latency_increase: must be a share of old's p99 from 0 to 1000 "
                              f"(0.20 is 20 % slower), got {self.latency_increase!r}")
        for name in ("error_rate", "latency_increase", "discrepancy_rate"):
            # Range-checked first, converted after: a 400-digit integer from the file is refused, not an OverflowError.
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))
        check_duration(self.window_s, "rollback_triggers.window")
        if isinstance(self.min_calls, bool) or not isinstance(self.min_calls, int) or self.min_calls < 1:
            raise ConfigError("rollback_triggers.min_calls: must be a whole number of 1 or more, "
                              f"got {self.min_calls!r}")

    @property
    def armed(self) -> tuple[str, ...]:
        """The names of the triggers the file turns on."""
        return tuple(name for name in ("error_rate", "latency_increase", "discrepancy_rate")
                     if getattr(self, name) is not None)

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {name: getattr(self, name) for name in self.armed}
        return {**doc, "window": format_duration(self.window_s), "min_calls": self.min_calls}


@dataclass(frozen=True, slots=True)
class CanaryPlan:
    """`canary`: the read and write percentage walked through `steps`, each held `interval_s`."""

    steps: tuple[float, ...]
    interval_s: float = DEFAULT_CANARY_INTERVAL_S

    def __post_init__(self) -> None:
        if not self.steps:
            raise ConfigError("canary.steps: must list at least one percentage")
        previous = 0.0
        for i, step in enumerate(self.steps):
            if not _is_number(step, 0.0, 100.0) or step <= 0:
                raise ConfigError(f"canary.steps[{i}]: must be a percentage above 0 and at most 100, got {step!r}")
            if step <= previous:
                raise ConfigError(f"canary.steps[{i}]: must be above the step before it ({previous:g}), got {step:g}")
            previous = step
        check_duration(self.interval_s, "canary.interval")

    def to_document(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "interval": format_duration(self.interval_s)}


def parse_duration(value: object, field: str) -> float:
    """Seconds from `90`, `90s`, `500ms`, `10m` or `1h`; ConfigError naming field otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{field}: must be a duration such as 60s, 10m or 1h, got {value!r}")
    if isinstance(value, int | float):
        check_duration(value, field)  # before float(): a 400-digit integer would overflow it
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        raise ConfigError(f"{field}: must be a duration such as 60s, 10m or 1h, got {value!r}")
    check_duration(seconds, field)
    return seconds


def check_duration(seconds: float, field: str) -> None:
    if not _is_number(seconds, MIN_DURATION_S, MAX_DURATION_S):
        raise ConfigError(f"{field}: must be from {MIN_DURATION_S:g}s to {MAX_DURATION_S / 3600:g}h, got {seconds!r}s")


def format_duration(seconds: float) -> str:
    """The shortest of `10m`, `90s`, `1.5s` that says seconds exactly."""
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    # repr, not :g (six digits: 12345.25 would come back as 12345.2); within 1s..24h it never goes exponential.
    text = repr(float(seconds))
    return f"{text.removesuffix('.0')}s"


def _is_number(value: object, low: float, high: float) -> bool:
    # The range before isfinite: comparing a huge int works where isfinite would overflow converting it.
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and low <= value <= high and math.isfinite(value))
