"""The cutover's side of the write pause's lease: renewing it while the cutover works.

The proxy resumes writes by itself when a leased pause is not renewed in time, so a cutover killed
while writes are paused cannot leave the proxy read-only. The renewals run on a thread of their own,
so that a long final sync or verify (blocking calls on the main thread) never lets the lease lapse.
"""

from __future__ import annotations

import threading
import time

import grpc
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy.control.report import Step, StepFailed

#: The write pause's lease: the proxy resumes writes by itself when it is not renewed for this long.
PAUSE_LEASE_S = 10.0


class LeaseKeeper:
    """Renews the write pause's lease every quarter of it, on a thread of its own, until stopped.

    `lost` says why the pause is gone (the lease ran out, or writes were resumed by someone else)."""

    def __init__(self, stub: admin_pb2_grpc.AdminStub, reason: str, lease_s: float) -> None:
        self._stub = stub
        self._reason = reason
        self.lease_s = lease_s
        self.renewals = 0
        self.lost = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pause-lease", daemon=True)
        self._renewed = time.monotonic()
        self._expired_before = 0

    def start(self, paused: admin_pb2.PauseState) -> LeaseKeeper:
        self._renewed = time.monotonic()
        self._expired_before = paused.leases_expired
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = self.lease_s / 4
        while not self._stop.wait(interval):
            try:
                state: admin_pb2.PauseState = self._stub.PauseWrites(admin_pb2.PauseWritesRequest(
                    paused=True, reason=self._reason, lease_seconds=self.lease_s, renew=True), timeout=interval)
            except grpc.RpcError as exc:  # the proxy is slow or away: try again while the lease may hold
                if time.monotonic() - self._renewed > self.lease_s:
                    self.lost = f"the write pause lease could not be renewed for {self.lease_s:g}s: {exc}"
                    return
                continue
            if self._stop.is_set():
                return
            if not state.paused:
                expired = state.leases_expired > self._expired_before
                self.lost = ("the proxy resumed writes before the cutover was done: "
                             + ("the pause's lease ran out" if expired else "someone else resumed them"))
                return
            self.renewals += 1
            self._renewed = time.monotonic()

    def stop(self) -> None:
        """Stop renewing; once this returns no renewal is in flight (so a resume cannot be undone)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def check(self, step: Step) -> None:
        """Fail the step when the pause is gone: writes may have gone through that it did not see."""
        if self.lost:
            step.detail = f"{step.detail}; {self.lost}" if step.detail else self.lost
            raise StepFailed(step.detail)
