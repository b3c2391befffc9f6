"""Writes to a Redis Cluster that are acknowledged only once a replica holds them.

Redis replicates asynchronously: a master answers a write before its replica has it, and a master
that dies then hands its slots to a replica that never saw the write. So after the writes of one
batch, the backend sends `WAIT 1 <ms>` to each master it wrote to, on the same connection (a
cluster pipeline sends each node's commands on one connection, in order), and acknowledges only
when every such master says a replica has caught up.

A master with no replica connected at all (a cluster without replicas, or a replica that is down)
cannot do better than its own AOF, fsynced on every write: when WAIT falls short there, the write
is acknowledged, and that master is not waited for again for a few seconds (so a cluster without
replicas does not pay the WAIT timeout on every write). A master whose replica is connected but
does not confirm (hung, far behind) gets its writes refused as not acknowledged. What this leaves
open is a double failure: a replica down, writes taken by its master alone, and that master lost
before the replica has caught up again.

A write whose slot moved meanwhile (a failover between the client's look-up and the write) is
reported unavailable: the write may have landed, but nothing vouches for its copy, and the
proxy's replication treats an unacknowledged write as one to check again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster

#: One command of a write: its arguments, and the keys it writes (to find the masters to wait for).
Command = tuple[tuple[Any, ...], Sequence[bytes]]
#: How long a master found with no replica connected is written to without WAIT before looking again.
ALONE_SECONDS = 5.0


class NotReplicated(Exception):
    """The writes reached their masters but no replica vouched for them in time."""


class Replicas:
    """The masters last found with no replica connected, until when they are not waited for."""

    def __init__(self) -> None:
        self._alone_until: dict[str, float] = {}

    def waited(self, node: ClusterNode) -> bool:
        return self._alone_until.get(node.name, 0.0) <= time.monotonic()

    def found_alone(self, node: ClusterNode) -> None:
        self._alone_until[node.name] = time.monotonic() + ALONE_SECONDS


async def write_replicated(client: RedisCluster, commands: Sequence[Command], wait_ms: int,
                           replicas: Replicas) -> list[Any]:
    """Run the commands in one cluster pipeline, then WAIT for a replica on each master written; their replies."""
    await client.initialize()  # a no-op once the nodes are known; the look-ups below need them
    keys = [key for _, written in commands for key in written]
    masters = _masters_of(client, keys)
    pipe = client.pipeline()
    for args, _ in commands:
        pipe.execute_command(*args)
    waited = [node for node in masters.values() if replicas.waited(node)]
    for node in waited:
        pipe.execute_command("WAIT", 1, wait_ms, target_nodes=node)
    replies: list[Any] = await pipe.execute()
    acks = replies[len(commands):]
    if set(_masters_of(client, keys)) != set(masters):
        raise NotReplicated("a slot moved to another master during the write (a failover)")
    short: list[str] = []
    for node, ack in zip(waited, acks, strict=True):
        if int(ack) >= 1:
            continue
        # ROLE on a master: ["master", offset, [[ip, port, offset] per connected replica]].
        role = await client.execute_command("ROLE", target_nodes=node)
        if role[2]:
            short.append(node.name)
        else:
            replicas.found_alone(node)
    if short:
        raise NotReplicated(f"no replica of {', '.join(short)} confirmed the write within {wait_ms} ms")
    return replies[: len(commands)]


def _masters_of(client: RedisCluster, keys: Sequence[bytes]) -> dict[str, ClusterNode]:
    masters: dict[str, ClusterNode] = {}
    for key in keys:
        node = client.get_node_from_key(key)  # type: ignore[arg-type]  # bytes keys work, the stub says str
        if node is None:
            raise NotReplicated(f"no master serves the slot of {key!r} (cluster not whole)")
        masters[node.name] = node
    return masters
