"""The Wilson score interval of a rate: how far the true rate may be from what a few samples showed.

A discrepancy rate of "0 of 40 compared" is not 0 %: at 95 % confidence the true rate may be as high
as 8.8 %. Wilson's interval (unlike the normal approximation) stays inside [0, 1] and is honest at
zero and for small counts, which is where a canary's first minutes live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The two-sided 95 % quantile of the standard normal distribution.
Z_95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float


def wilson(events: int, trials: int, z: float = Z_95) -> Interval:
    """The 95 % Wilson score interval of events/trials; (0, 1) when nothing was tried."""
    if trials <= 0:
        return Interval(0.0, 1.0)
    events = min(max(events, 0), trials)
    p = events / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    # At the edges the formula meets 0 and 1 exactly in theory; rounding must not push past them.
    return Interval(0.0 if events == 0 else max(0.0, centre - half),
                    1.0 if events == trials else min(1.0, centre + half))
