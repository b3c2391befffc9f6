"""Long admin jobs (Migrate, Verify) run inside the proxy and streamed to the caller as progress
updates, then their result or their error."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from turnout.admin.v1 import admin_pb2

from proxy.errors import TurnoutError
from proxy.migration.migrate import load_transform, migrate
from proxy.migration.stores import Stores
from proxy.migration.verify import verify
from proxy.progress import Progress
from proxy.routing.router import Route

#: How often a running job tells its caller how far it got.
UPDATE_INTERVAL_S = 0.5


@dataclass
class JobRecord:
    """One Migrate or Verify run inside the proxy, for the dashboard: how far it got, and how it ended."""

    kind: str
    progress: Progress
    started: float
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: str = ""

    def ended(self, job: asyncio.Task[Any]) -> None:
        self.finished = time.time()
        if job.cancelled():
            self.error = "cancelled: its caller went away"
        elif job.exception() is not None:
            self.error = str(job.exception())
        else:
            self.result = job.result().to_document()

    def to_document(self) -> dict[str, Any]:
        return {"kind": self.kind, "running": self.finished is None, "done": self.progress.done,
                "total": self.progress.total, "started_unix": self.started, "finished_unix": self.finished,
                "result": self.result, "error": self.error}


class JobBoard:
    """The latest run of each kind of job."""

    def __init__(self) -> None:
        self.latest: dict[str, JobRecord] = {}

    def track(self, kind: str, progress: Progress, job: asyncio.Task[Any]) -> None:
        record = self.latest[kind] = JobRecord(kind, progress, time.time())
        job.add_done_callback(record.ended)


#: The job board of each proxy, by its state_dir: one proxy owns a state_dir, and the admin service
#: hands the jobs its state_dir (not the AdminState), so that is what the dashboard looks them up by.
_BOARDS: dict[Path, JobBoard] = {}


def job_board(state_dir: Path) -> JobBoard:
    return _BOARDS.setdefault(state_dir, JobBoard())


async def migrate_updates(stores: Stores, state_dir: Path, request: admin_pb2.MigrateRequest,
                          context: Any) -> AsyncIterator[admin_pb2.JobUpdate]:
    """Run a migrate as the request asks; a transform that cannot be loaded is INVALID_ARGUMENT."""
    progress = Progress("migrate", None, enabled=False)
    try:
        transform = load_transform(request.transform) if request.transform else None
    except TurnoutError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    job = asyncio.create_task(migrate(
        stores, state_dir, Route(request.source or "old"), request.batch_size or 500,
        request.concurrency or 16, request.rate or None, transform, request.restart, progress, request.read_back,
    ))
    job_board(state_dir).track("migrate", progress, job)
    async for update in follow(job, progress):
        yield update


async def verify_updates(stores: Stores, state_dir: Path,
                         request: admin_pb2.VerifyRequest) -> AsyncIterator[admin_pb2.JobUpdate]:
    """Run a verify (and repair, if asked) as the request asks."""
    progress = Progress("verify", None, enabled=False)
    truth = Route(request.truth) if request.truth else None
    job = asyncio.create_task(verify(stores, request.repair, progress, truth, state_dir))
    job_board(state_dir).track("verify", progress, job)
    async for update in follow(job, progress):
        yield update


async def follow(job: asyncio.Task[Any], progress: Progress) -> AsyncIterator[admin_pb2.JobUpdate]:
    """Stream a job's progress every UPDATE_INTERVAL_S, then its result (or its error)."""
    while not job.done():
        await asyncio.wait([job], timeout=UPDATE_INTERVAL_S)
        if not job.done():
            yield admin_pb2.JobUpdate(done=progress.done, total=progress.total or 0)
    if job.exception() is not None:
        yield admin_pb2.JobUpdate(done=progress.done, error=str(job.exception()))
        return
    yield admin_pb2.JobUpdate(done=progress.done, total=progress.total or 0,
                              result_json=json.dumps(job.result().to_document()))
