"""What the guard and the checkpoints read from a running proxy: every process's counters, and the
inputs of the go/no-go checkpoints (the guard's window, the records in state_dir, the queue, health).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from turnout.admin.v1 import admin_pb2

from proxy import statedir
from proxy.admin.state import AdminState
from proxy.data.discrepancies import report_from_log
from proxy.safety import records
from proxy.safety.checkpoints import CheckpointInputs, evaluate_checkpoints
from proxy.safety.counters import Counters
from proxy.safety.window import Readings
from proxy.workers.relay import RELAY_TIMEOUT_S, relay

log = logging.getLogger(__name__)


def local_counters(state: AdminState) -> Counters | None:
    """This process's counters since it started; None before its backends are open."""
    if state.plane is None:
        return None
    snapshot = state.plane.snapshot()
    return Counters.read(snapshot.metrics, snapshot.discrepancies, state.started)


async def readings(state: AdminState) -> Readings:
    """Every process's counters: this one's, and on worker 0 every other worker's that answers (one
    that does not is left out of this reading; the window bridges the gap with its next one)."""
    found: dict[str, Counters] = {}
    own = local_counters(state)
    if own is not None:
        found[str(state.worker)] = own
    others = state.other_workers()
    if others:
        asked = admin_pb2.CountersRequest()
        for answer in await relay(others, lambda stub: stub.Counters(asked, timeout=RELAY_TIMEOUT_S),
                                  state.admin_token):
            if answer.reply is not None and answer.reply.counters_json:
                found[str(answer.peer.index)] = Counters.from_document(json.loads(answer.reply.counters_json))
    return found


async def checkpoint_report(state: AdminState) -> dict[str, Any] | None:
    """The plan's go/no-go checkpoints from what this proxy measured; None where no guard runs."""
    guard, plane = state.guard, state.plane
    if guard is None or plane is None:
        return None
    flags = state.watcher.router.flags
    judgement = guard.last if guard.last is not None else await guard.evaluate_once()
    safety = await asyncio.to_thread(records.read, state.state_dir)
    since = safety.shadow_since
    since_shadow = None if since is None else await asyncio.to_thread(report_from_log, state.state_dir, since)
    last_verify, age = await asyncio.to_thread(statedir.last_verify, state.state_dir)
    snapshot = plane.snapshot()
    inputs = CheckpointInputs(
        now=time.time(), flags=flags, overridden=state.watcher.override is not None, window=judgement.figures,
        evaluation=judgement.evaluation, since_shadow=since_shadow, records=safety,
        last_verify=last_verify, last_verify_age_s=age, replication=snapshot.replication,
        backends_healthy={backend.name: backend.healthy for backend in snapshot.backends},
    )
    return evaluate_checkpoints(inputs)
