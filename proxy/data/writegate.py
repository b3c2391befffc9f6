"""The write gate: an operator's write pause (a cutover's window), above the flag file's read_only.

A pause may carry a lease: when the lease runs out without renewal the gate opens by itself, so a
cutover killed while writes are paused cannot leave the proxy read-only. The write path reads one
attribute (`paused`) per write; everything else happens only when an operator acts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.errors import ReadOnly

log = logging.getLogger(__name__)

#: Told of every change of the gate: (event name, span attributes); the telemetry's event by default.
EventSink = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class PauseStatus:
    """What `turnout status` shows of the write pause."""

    paused: bool
    reason: str
    lease_expires: float  # unix time; 0 without a lease in force
    leases_expired: int
    last_expired: float
    last_expired_reason: str


class WriteGate:
    def __init__(self, events: EventSink | None = None) -> None:
        #: Why writes are paused, or None while they flow.
        self.paused: str | None = None
        self._events: EventSink = events or (lambda name, attributes: None)
        self._timer: asyncio.TimerHandle | None = None
        self._expires = 0.0
        self._expired = 0
        self._last_expired = 0.0
        self._last_expired_reason = ""

    def check(self) -> None:
        """Refuse a write while paused."""
        if self.paused is not None:
            raise ReadOnly(f"writes are paused by an operator: {self.paused}")

    def pause(self, reason: str, lease_s: float = 0.0) -> PauseStatus:
        """Pause writes (again, with a fresh lease, if they were); lease_s 0 holds until resumed."""
        self._cancel_lease()
        self.paused = reason or "paused by an operator"
        if lease_s > 0:
            self._lease(lease_s)
        log.warning("writes paused: %s%s", reason, f" (lease {lease_s:g}s)" if lease_s > 0 else "")
        self._events("turnout.writes.paused", {"turnout.reason": reason, "turnout.writes.lease_seconds": lease_s})
        return self.status()

    def resume(self, reason: str) -> PauseStatus:
        self._cancel_lease()
        self.paused = None
        log.warning("writes resumed: %s", reason)
        self._events("turnout.writes.resumed", {"turnout.reason": reason, "turnout.writes.lease_seconds": 0.0})
        return self.status()

    def renew(self, lease_s: float) -> PauseStatus:
        """Extend a leased pause in force; never pause again. Once the lease ran out (or an operator
        resumed), writes may have gone through, and the holder learns it from the status."""
        if self.paused is not None and self._timer is not None and lease_s > 0:
            self._lease(lease_s)
        return self.status()

    @property
    def leased(self) -> bool:
        """Whether a lease is running (it opens the gate when it runs out)."""
        return self._timer is not None

    def status(self) -> PauseStatus:
        paused = self.paused is not None
        return PauseStatus(paused=paused, reason=self.paused or "", lease_expires=self._expires if paused else 0.0,
                           leases_expired=self._expired, last_expired=self._last_expired,
                           last_expired_reason=self._last_expired_reason)

    def close(self) -> None:
        """Drop the lease timer (shutdown); the pause itself dies with the process."""
        self._cancel_lease()

    def _lease(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._lease_ran_out)
        self._expires = time.time() + seconds

    def _cancel_lease(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._expires = 0.0

    def _lease_ran_out(self) -> None:
        reason = self.paused or ""
        self._timer = None
        self._expires = 0.0
        if self.paused is None:
            return
        self.paused = None
        self._expired += 1
        self._last_expired = time.time()
        self._last_expired_reason = reason
        log.warning("writes resumed: the lease of the write pause (%s) ran out without renewal; "
                    "whoever paused them (a cutover?) is gone or stuck", reason)
        self._events("turnout.writes.lease_expired", {"turnout.reason": reason})
