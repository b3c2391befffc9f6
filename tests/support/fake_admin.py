"""A fake of the admin calls a cutover makes, for driving proxy/migration/cutover.py without a proxy."""

from __future__ import annotations

from typing import Any

from turnout.admin.v1 import admin_pb2


def clean_result() -> dict[str, Any]:
    """What a final sync or a verify that found nothing to do reports (a Follow's answer)."""
    return {"migrated": 0, "skipped": 0, "error_count": 0, "missing": 0, "different": 0, "extra": 0,
            "clean": True}


class FakeAdmin:
    """The admin calls a cutover makes, recorded: pauses, resumes and overrides in `calls`, renewals
    counted, rollback records kept. Both backends are healthy and replication is empty."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.renewals = 0
        self.rollbacks: list[admin_pb2.RollbackRecord] = []

    def Status(self, request: Any, timeout: float) -> admin_pb2.StatusResponse:
        return admin_pb2.StatusResponse(backends=[admin_pb2.BackendState(name="old", healthy=True),
                                                  admin_pb2.BackendState(name="new", healthy=True)])

    def PauseWrites(self, request: admin_pb2.PauseWritesRequest, timeout: float) -> admin_pb2.PauseState:
        if request.renew:
            self.renewals += 1
        else:
            self.calls.append("pause" if request.paused else "resume")
        return admin_pb2.PauseState(paused=request.paused)

    def Drain(self, request: Any, timeout: float) -> admin_pb2.ReplicationState:
        return admin_pb2.ReplicationState(depth=0)

    def Migrate(self, request: Any) -> str:
        return "final sync"

    def Verify(self, request: Any) -> str:
        return "verify"

    def SetOverride(self, request: admin_pb2.SetOverrideRequest, timeout: float) -> None:
        self.calls.append(f"override {request.route}")

    def RecordRollback(self, request: admin_pb2.RollbackRecord, timeout: float) -> admin_pb2.RollbackRecord:
        self.rollbacks.append(request)
        return request
