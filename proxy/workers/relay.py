"""Worker 0 speaking for a proxy of several workers (`turnout serve --workers N`).

Each worker is a whole proxy with its own flag watcher, write pause and replication queue, and its
own admin API (and HTTP side) on loopback. Operators and the cutover talk to worker 0 only (on
`admin.listen` and `admin.http`), so worker 0 passes every change on to the others (`relay`),
answers Status with the figures of all of them (`merge_status`), and serves one /metrics page for
all of them (`merged_metrics`: each worker's page read with prometheus-client's parser, every
family once, every sample labelled with its worker).

The other workers never relay: what they are asked, they do alone. Every peer call has a deadline,
and a peer that fails is named (index and address) in what the operator reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import aiohttp
import grpc
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy.admin.auth import AUTHORIZATION, SendToken, bearer

if TYPE_CHECKING:
    from turnout.admin.v1.admin_pb2_grpc import AdminAsyncStub

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The deadline of one call to a peer, and of one /metrics fetch: under the 5 s that the command line
#: and the cutover give worker 0, so that they hear which worker hangs rather than a deadline of their own.
RELAY_TIMEOUT_S = 3.0
#: Latency quantiles cannot be added up: the merged one is the highest of the workers', which bounds
#: the quantile over all their calls from above.
_QUANTILES = frozenset({"p50", "p95", "p99"})
#: Figures that are the highest of the workers' too: moments (the latest wins), and coverage's
#: distinct keys of one worker, a lower bound of all workers' (proxy.data.coverage).
_HIGHEST = _QUANTILES | {"last_compared_unix", "since_unix", "compared_at_least"}


@dataclass(frozen=True, slots=True)
class Peer:
    """Another worker, as worker 0 reaches it: its index and one of its addresses ("host:port" of its
    admin API or of its HTTP side)."""

    index: int
    address: str


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """One peer's answer to a relayed call: its reply, or why there is none."""

    peer: Peer
    reply: T | None
    error: str = ""


def current(source: Callable[[], Iterable[tuple[int, str]]]) -> tuple[Peer, ...]:
    """The peers as the source says now (a restarted worker comes back on a new port), by index."""
    return tuple(sorted((Peer(index, address) for index, address in source()), key=lambda p: p.index))


async def ask(peer: Peer, call: Callable[[AdminAsyncStub], Awaitable[T]], token: str | None = None) -> Answer[T]:
    """Make one admin call on one peer, on a channel of its own (admin calls are rare; a cached
    channel would outlive a worker that restarted elsewhere); with the admin token when there is one."""
    if not peer.address:
        return Answer(peer, None, "not serving yet: it has not published its admin address")
    interceptors = [] if token is None else [SendToken(token)]
    try:
        async with grpc.aio.insecure_channel(peer.address, interceptors=interceptors) as channel:
            return Answer(peer, await call(admin_pb2_grpc.AdminStub(channel)))
    except grpc.aio.AioRpcError as exc:
        return Answer(peer, None, f"{exc.code().name}: {exc.details()}")
    except Exception as exc:  # a bad address, a refused connection: the operator reads it in the answer
        return Answer(peer, None, f"{type(exc).__name__}: {exc}")


async def relay(peers: Sequence[Peer], call: Callable[[AdminAsyncStub], Awaitable[T]],
                token: str | None = None) -> list[Answer[T]]:
    """The same call on every peer at once (with the admin token, when there is one); one answer per
    peer, in the peers' order."""
    return list(await asyncio.gather(*(ask(peer, call, token) for peer in peers)))


def failure(what: str, answers: Sequence[Answer[Any]]) -> str:
    """The message of a relayed change that some peers did not take: which, where and why."""
    reasons = "; ".join(f"worker {a.peer.index} at {a.peer.address}: {a.error}" for a in answers if a.error)
    return f"{what} did not reach every worker ({reasons})"


def holds_on(answers: Sequence[Answer[Any]], local: int = 0) -> str:
    """Where a change that did not reach every worker holds: worker 0 and the peers that took it."""
    took = [str(local)] + [str(a.peer.index) for a in answers if not a.error]
    return f"it holds on worker(s) {', '.join(took)}"


# --- Status ------------------------------------------------------------------------------------


def merge_status(response: admin_pb2.StatusResponse, answers: Sequence[Answer[admin_pb2.StatusResponse]]) -> None:
    """Fold the peers' statuses into worker 0's: counters summed, health and pauses only when true of
    every worker that answered, one WorkerState per peer (unreachable ones too)."""
    replies = []
    for answer in answers:
        reply = answer.reply
        if reply is None:
            response.workers.append(admin_pb2.WorkerState(
                index=answer.peer.index, admin_address=answer.peer.address, reachable=False, error=answer.error))
            continue
        worker = admin_pb2.WorkerState()
        if reply.workers:
            worker.CopyFrom(reply.workers[0])  # a peer lists itself, and only itself
        else:
            worker.CopyFrom(worker_state(answer.peer.index, 0, reply))
        worker.index = answer.peer.index
        worker.admin_address = answer.peer.address
        worker.reachable = True
        response.workers.append(worker)
        replies.append((answer.peer.index, reply))
    if not replies:
        return
    response.replication.CopyFrom(merge_replication(
        [(0, response.replication)] + [(index, reply.replication) for index, reply in replies]))
    response.writes.CopyFrom(merge_pause([response.writes] + [reply.writes for _, reply in replies]))
    _merge_backends(response, replies)
    shadow = json.loads(response.shadow_json or "{}")
    for _, reply in replies:
        shadow = merge_counts(shadow, json.loads(reply.shadow_json or "{}"))
    if "compared" in shadow:
        shadow["rate"] = shadow.get("discrepancies", 0) / shadow["compared"] if shadow["compared"] else 0.0
    response.shadow_json = json.dumps(shadow)


def worker_state(index: int, pid: int, status: admin_pb2.StatusResponse) -> admin_pb2.WorkerState:
    """One worker's line in the workers list, from its own (unmerged) status."""
    operations = json.loads(status.shadow_json or "{}").get("operations", {})
    return admin_pb2.WorkerState(
        index=index, pid=pid, reachable=True, serving=bool(status.backends),
        operations=sum(n for routes in operations.values() for n in routes.values()),
        replication_depth=status.replication.depth, writes_paused=status.writes.paused,
        flags_revision=status.reload.revision, started_unix=status.started_unix,
    )


def merge_replication(states: Sequence[tuple[int, admin_pb2.ReplicationState]]) -> admin_pb2.ReplicationState:
    """The replication of all workers' queues: depths and counts summed, the oldest write's age."""
    last_error = next((f"worker {index}: {state.last_error}" for index, state in states if state.last_error), "")
    return admin_pb2.ReplicationState(
        depth=sum(s.depth for _, s in states), oldest_age_seconds=max(s.oldest_age_seconds for _, s in states),
        replayed=sum(s.replayed for _, s in states), failures=sum(s.failures for _, s in states),
        last_error=last_error,
    )


def merge_pause(states: Sequence[admin_pb2.PauseState]) -> admin_pb2.PauseState:
    """Writes are paused only while every worker holds the pause; a lease runs out with the first one."""
    paused = all(s.paused for s in states)
    leases = [s.lease_expires_unix for s in states if s.lease_expires_unix]
    last = max(states, key=lambda s: s.last_lease_expired_unix)
    return admin_pb2.PauseState(
        paused=paused, reason=states[0].reason if paused else "",
        lease_expires_unix=min(leases) if paused and leases else 0.0,
        leases_expired=sum(s.leases_expired for s in states),
        last_lease_expired_unix=last.last_lease_expired_unix, last_lease_expired_reason=last.last_lease_expired_reason,
    )


def _merge_backends(response: admin_pb2.StatusResponse,
                    replies: Sequence[tuple[int, admin_pb2.StatusResponse]]) -> None:
    """A backend is healthy when every worker's last call to it succeeded; the first failure is named."""
    for backend in response.backends:
        for index, reply in replies:
            theirs = next((b for b in reply.backends if b.name == backend.name), None)
            if theirs is not None and not theirs.healthy and backend.healthy:
                backend.healthy = False
                backend.error = f"worker {index}: {theirs.error}"


def merge_counts(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Two workers' shadow documents as one: numbers added (latency quantiles: the higher), nested
    documents merged the same way, anything else as worker 0 has it."""
    merged = dict(mine)
    for key, value in theirs.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = merge_counts(merged[key], value)
        elif _number(value) and _number(merged[key]):
            merged[key] = max(merged[key], value) if key in _HIGHEST else merged[key] + value
    return merged


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- /metrics ----------------------------------------------------------------------------------


async def fetch_metrics(address: str, timeout: float = RELAY_TIMEOUT_S, token: str | None = None) -> list[Metric]:
    """GET /metrics from a worker's HTTP side (with the admin token, when there is one), parsed; an
    error unless it answered 200 in time."""
    if not address:
        raise ConnectionError("not serving yet: it has not published its HTTP address")
    headers = {} if token is None else {AUTHORIZATION: bearer(token)}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
            session.get(f"http://{address}/metrics", headers=headers) as reply:
        if reply.status != 200:
            raise ConnectionError(f"GET /metrics answered {reply.status} {reply.reason}")
        text = await reply.text()
    return list(text_string_to_metric_families(text))


async def merged_metrics(local: int, families: Sequence[Metric], peers: Sequence[Peer],
                         token: str | None = None) -> list[Metric]:
    """Worker `local`'s families with every peer's, labelled by worker; a peer that cannot be read is
    left out and shown by turnout_worker_up."""
    pages = await asyncio.gather(*(fetch_metrics(peer.address, token=token) for peer in peers),
                                 return_exceptions=True)
    by_worker: list[tuple[int, Sequence[Metric]]] = [(local, families)]
    up = GaugeMetricFamily("turnout_worker_up", "1 when worker 0 could read the worker's metrics (serve --workers N).",
                           labels=("worker",))
    read = {local: True}
    for peer, page in zip(peers, pages, strict=True):
        if isinstance(page, BaseException):
            log.warning("metrics of worker %d at %s left out: %r", peer.index, peer.address, page)
            read[peer.index] = False
        else:
            by_worker.append((peer.index, page))
            read[peer.index] = True
    for index in sorted(read):
        up.add_metric((str(index),), 1 if read[index] else 0)
    return [*label_by_worker(by_worker), up]


def label_by_worker(pages: Iterable[tuple[int, Iterable[Metric]]]) -> list[Metric]:
    """Several workers' families as one set: each family once (help and type as the first worker gives
    them), its samples together, each with the label worker="<index>"."""
    merged: dict[str, Metric] = {}
    for index, families in pages:
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type)
            worker = str(index)
            into.samples.extend(sample._replace(labels={**sample.labels, "worker": worker})
                                for sample in family.samples)
    return list(merged.values())
