"""One backend call as the proxy makes it: timed into the latency metric, traced as a child span of the
caller's, and counted in the backend's health (what `turnout status` and the health checks show).

Every call the data plane makes to a store goes through BackendCalls.call, the primary's, the
shadow's, and the presence checks of a Keys listing alike, so each is measured the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import TypeVar

from opentelemetry import trace

from proxy.backends.base import Backend
from proxy.errors import BackendUnavailable, InvalidArgument
from proxy.routing.router import Op, Route
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.tracing import Telemetry

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """One caller's operation as it passes through: who asked, and its span when traced."""

    caller: str | None = None
    span: trace.Span | None = None


#: The call of a caller who gave no name, untraced: most calls, which then share it (frozen) rather
#: than each building its own.
UNNAMED = Call()


@dataclass(slots=True)
class BackendHealth:
    """What the proxy has seen of one backend's calls, for `turnout status` and health checks."""

    calls: int = 0
    errors: int = 0
    last_error: str = ""
    consecutive_errors: int = 0

    @property
    def healthy(self) -> bool:
        return self.consecutive_errors == 0


class BackendCalls:
    """The backends by route, with the health of each, and the one way to call them."""

    def __init__(self, backends: Mapping[Route, Backend], metrics: Metrics, telemetry: Telemetry) -> None:
        self.backends = backends
        self.metrics = metrics
        self.telemetry = telemetry
        self.health = {route: BackendHealth() for route in backends}

    async def call(self, route: Route, op: Op, call: Awaitable[T], parent: Call,
                   span: trace.Span | None = None) -> T:
        """Await a backend call, keeping its health, latency metric and child span."""
        if span is None and parent.span is not None:
            span = self.span(route, op, parent)
        health = self.health[route]
        health.calls += 1
        started = perf_counter()
        failed = False
        try:
            return await call
        except StopAsyncIteration:
            raise  # the end of a Keys listing: a call that succeeded with nothing more to give
        except BaseException as exc:
            # A document the store refuses (InvalidArgument) is the caller's error, not the store's:
            # it does not count against the store's error rate, which trips the rollback trigger. A
            # call the caller gave up on (cancelled at its deadline) does: a store that hangs fails
            # its callers that way, and would otherwise look healthy.
            failed = not isinstance(exc, InvalidArgument)
            if isinstance(exc, BackendUnavailable):
                health.errors += 1
                health.consecutive_errors += 1
                health.last_error = str(exc)
            if span is not None:
                span.set_status(trace.StatusCode.ERROR, str(exc))
            raise
        finally:
            self.metrics.backend_call(route, op, perf_counter() - started, failed)
            if not failed:
                health.consecutive_errors = 0
            if span is not None:
                span.end()

    def span(self, route: Route, op: Op, parent: Call) -> trace.Span | None:
        """The child span of a call to the route's backend (None when the caller's is not traced)."""
        return self.telemetry.backend_span(parent.span, op.value, route.value, self.backends[route].type_name)
