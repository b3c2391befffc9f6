"""Worker 0 speaking for a proxy of several workers (`turnout serve --workers N`).

Each worker is a whole proxy with its own flag watcher, write pause and replication queue, and its
own admin port on loopback. Operators and the cutover talk to worker 0 only (on `admin.listen`), so
worker 0 passes every change on to the others (`relay`), answers Status with the figures of all of
them (`merge_status`), and serves one /metrics page for all of them (`merge_expositions`).

The other workers never relay: what they are asked, they do alone. Every peer call has a deadline,
and a peer that fails is named (index and address) in what the operator reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy.telemetry.metrics import Exposition

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


@dataclass(frozen=True, slots=True)
class Peer:
    """Another worker, as worker 0 reaches it: its index and its admin port ("host:port")."""

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


async def ask(peer: Peer, call: Callable[[AdminAsyncStub], Awaitable[T]]) -> Answer[T]:
    """Make one admin call on one peer, on a channel of its own (admin calls are rare; a cached
    channel would outlive a worker that restarted elsewhere)."""
    if not peer.address:
        return Answer(peer, None, "not serving yet: it has not published its admin address")
    try:
        async with grpc.aio.insecure_channel(peer.address) as channel:
            return Answer(peer, await call(admin_pb2_grpc.AdminStub(channel)))
    except grpc.aio.AioRpcError as exc:
        return Answer(peer, None, f"{exc.code().name}: {exc.details()}")
    except Exception as exc:  # a bad address, a refused connection: the operator reads it in the answer
        return Answer(peer, None, f"{type(exc).__name__}: {exc}")


async def relay(peers: Sequence[Peer], call: Callable[[AdminAsyncStub], Awaitable[T]]) -> list[Answer[T]]:
    """The same call on every peer at once; one answer per peer, in the peers' order."""
    return list(await asyncio.gather(*(ask(peer, call) for peer in peers)))


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
            merged[key] = max(merged[key], value) if key in _QUANTILES else merged[key] + value
    return merged


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- /metrics ----------------------------------------------------------------------------------


async def fetch_page(address: str, path: str, timeout: float = RELAY_TIMEOUT_S) -> bytes:
    """GET path from a worker's admin port (its plain-HTTP side); the body of a 200, else an error."""
    host, _, port = address.rpartition(":")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()  # the front closes the connection after one answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "200":
        raise ConnectionError(f"GET {path} answered {lines[0]!r}")
    headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    length = next((int(v) for k, v in headers.items() if k.strip().lower() == "content-length"), len(body))
    if len(body) < length:
        raise ConnectionError(f"GET {path}: the answer stopped after {len(body)} of {length} bytes")
    return body[:length]


async def merged_metrics(local: int, text: str, peers: Sequence[Peer]) -> str:
    """Worker 0's /metrics page (text) with every peer's, as one page; a peer that cannot be read is
    left out and shown by turnout_worker_up."""
    pages = await asyncio.gather(*(fetch_page(peer.address, "/metrics") for peer in peers), return_exceptions=True)
    texts = [(local, text)]
    up: list[tuple[dict[str, str], float]] = [({"worker": str(local)}, 1)]
    for peer, page in zip(peers, pages, strict=True):
        if isinstance(page, BaseException):
            log.warning("metrics of worker %d at %s left out: %r", peer.index, peer.address, page)
            up.append(({"worker": str(peer.index)}, 0))
        else:
            texts.append((peer.index, page.decode()))
            up.append(({"worker": str(peer.index)}, 1))
    out = Exposition()
    out.family("turnout_worker_up", "gauge", "1 when worker 0 could read the worker's metrics (serve --workers N).",
               sorted(up, key=lambda sample: int(sample[0]["worker"])))
    return merge_expositions(texts) + out.text()


@dataclass
class _Family:
    name: str
    help: str | None = None
    kind: str | None = None
    samples: list[str] = field(default_factory=list)


def merge_expositions(texts: Sequence[tuple[int, str]]) -> str:
    """Several workers' Prometheus text pages as one: each family once (HELP and TYPE as the first
    worker gives them), its samples together, each with the label worker="<index>"."""
    families: dict[str, _Family] = {}
    for index, text in texts:
        family: _Family | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = families.setdefault(parts[2], _Family(parts[2]))
                    text_part = parts[3] if len(parts) > 3 else ""
                    if parts[1] == "HELP" and family.help is None:
                        family.help = text_part
                    elif parts[1] == "TYPE" and family.kind is None:
                        family.kind = text_part
                continue  # other comments are dropped
            name = _sample_name(line)
            if family is None or not name.startswith(family.name):
                family = families.setdefault(name, _Family(name))  # a sample without a family: untyped
            family.samples.append(with_label(line, name, "worker", str(index)))
    lines: list[str] = []
    for family in families.values():
        if family.help is not None:
            lines.append(f"# HELP {family.name} {family.help}")
        if family.kind is not None:
            lines.append(f"# TYPE {family.name} {family.kind}")
        lines.extend(family.samples)
    return "\n".join(lines) + "\n"


def _sample_name(line: str) -> str:
    end = len(line)
    for stop in ("{", " "):
        found = line.find(stop)
        if found != -1:
            end = min(end, found)
    return line[:end]


def with_label(line: str, name: str, label: str, value: str) -> str:
    """A sample line with one more label, put first."""
    rest = line[len(name):]
    if rest.startswith("{}"):
        rest = rest[2:]
    if rest.startswith("{"):
        return f'{name}{{{label}="{value}",{rest[1:]}'
    return f'{name}{{{label}="{value}"}}{rest}'
