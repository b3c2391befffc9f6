"""Redis (a standalone server or a Redis Cluster) as a store: the string `key_prefix + key` holds the document.

Keys are encoded UTF-8 and sent as bytes, so a key may hold anything Unicode allows, NUL and the
glob characters `*?[]\\` included; values are the document's bytes as given. Listing is SCAN with a
MATCH pattern on the escaped prefix: Redis has no ordered index, so `ordered_scan` is False, and
SCAN may return a key twice, so each listing drops the keys it has already yielded (holding the
keys of one listing in memory). On a cluster, every master is scanned in turn.

Durability is the server's: with `appendonly yes` and `appendfsync always` a standalone server has
fsynced a write before it answers (the backend does not check the server's configuration). On a
cluster a write is acknowledged only once a replica of its master has it too (rediscluster.py), so
a master's failover loses no acknowledged write; rediscluster.py says which double failure can.
Writes to one key land in the order they were issued (rediswriter.py).

A call that meets a broken connection is retried a few times with backoff (redisclient.RETRIES; on
a cluster each retry first rediscovers the nodes), writes included: a Set sent twice stores the
same document, and the proxy lets one writer at a time touch a key, so a retried Delete can at
worst report `existed=false` for a key it did remove.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from proxy.backends.base import DEFAULT_PAGE_SIZE, Item, Key, Value
from proxy.backends.redisclient import Calls, Client, RedisSettings, make_client
from proxy.backends.rediscluster import Command, NotReplicated, Replicas, write_replicated
from proxy.backends.rediswriter import WriteLanes, lane_of

if TYPE_CHECKING:
    from proxy.config import BackendSpec

# Redis glob metacharacters (stringmatchlen): each is matched literally once preceded by a backslash.
_GLOB = re.compile(rb"([*?\[\]\\])")
#: Keys a SCAN step examines: large, since a prefix pattern skips most of what it examines.
SCAN_COUNT = 1000
#: Keys (or items) per MGET / MSET: bounds one command's size on the wire and the server's pause.
BATCH = 500
#: An MSET of a bulk write takes up to this many items, as long as they average under MSET_BYTES in
#: all: fewer, larger commands cost redis-py less per key (migrate into redis 0.56 -> 0.63 of the raw
#: load at 2000 against 500, bench/migrate_servers.py), and the byte bound keeps one command small.
MSET_ITEMS, MSET_BYTES = 2000, 1 << 20
#: Write lanes (rediswriter): pipelines in flight at once. One: redis-py spends more per pipeline
#: than the server does per command, so fewer, larger batches win; bench/redis_store.py measured
#: about twice the sets/s with 1 lane as with 4 or 8 (standalone and cluster alike, 16 writers).
LANES = 1


def match_pattern(prefix: bytes) -> bytes:
    """The SCAN MATCH pattern of every key starting with prefix, taken literally."""
    return _GLOB.sub(rb"\\\1", prefix) + b"*"


class RedisBackend:
    type_name = "redis"
    ordered_scan = False

    def __init__(self, settings: RedisSettings, client: Client) -> None:
        self._settings = settings
        self._client = client
        self._prefix = settings.key_prefix.encode()
        self._calls = Calls(settings, client)
        # WAIT must answer before the socket times out, leaving time to report why it fell short.
        self._wait_ms = max(1, int(settings.call_timeout * 500))
        self._replicas = Replicas()
        self._lanes = WriteLanes(self._send, min(LANES, settings.pool_size))

    @classmethod
    async def open(cls, spec: BackendSpec) -> RedisBackend:
        """The backend of a spec; does not wait for the server (the first call connects)."""
        settings = RedisSettings.of(spec.options)
        return cls(settings, make_client(settings))

    def _key(self, key: Key) -> bytes:
        return self._prefix + key.encode()

    def _name(self, stored: bytes) -> Key:
        try:
            return stored[len(self._prefix):].decode()
        except UnicodeDecodeError:
            raise self._calls.failure("listing", f"key {stored!r} is not UTF-8 (written by another program?)") from None

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, key: Key) -> Value | None:
        async with self._calls.bounded("get"):
            return cast("bytes | None", await self._client.get(self._key(key)))

    async def has(self, key: Key) -> bool:
        async with self._calls.bounded("has"):
            return bool(await self._client.exists(self._key(key)))

    async def get_many(self, keys: Sequence[Key]) -> list[Value | None]:
        values: list[Value | None] = []
        for start in range(0, len(keys), BATCH):
            async with self._calls.bounded("get_many"):
                values.extend(await self._mget([self._key(key) for key in keys[start : start + BATCH]]))
        return values

    async def _mget(self, stored: list[bytes]) -> list[bytes | None]:
        if isinstance(self._client, RedisCluster):
            # One MGET per slot: a cluster refuses an MGET whose keys live in different slots.
            return cast("list[bytes | None]", await self._client.mget_nonatomic(stored))
        return cast("list[bytes | None]", await self._client.mget(stored))

    async def keys(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Key]]:
        async for page in self._stored_pages(prefix, page_size):
            yield [self._name(stored) for stored in page]

    async def scan(self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[list[Item]]:
        async for page in self._stored_pages(prefix, page_size):
            async with self._calls.bounded("scan"):
                values = await self._mget(page)
            # A key deleted between SCAN and MGET is simply not there any more.
            items = [(self._name(stored), value)
                     for stored, value in zip(page, values, strict=True) if value is not None]
            if items:
                yield items

    async def _stored_pages(self, prefix: str, page_size: int) -> AsyncIterator[list[bytes]]:
        """The stored keys under prefix, each once, in pages of at most page_size."""
        pattern = match_pattern(self._key(prefix))
        seen: set[bytes] = set()
        page: list[bytes] = []
        for node in await self._scanned_nodes():
            cursor = 0
            while True:
                async with self._calls.bounded("keys"):
                    cursor, found = await self._scan_step(node, cursor, pattern)
                for stored in found:
                    if stored in seen:
                        continue
                    seen.add(stored)
                    page.append(stored)
                    if len(page) == page_size:
                        yield page
                        page = []
                if cursor == 0:
                    break
        if page:
            yield page

    async def _scanned_nodes(self) -> list[ClusterNode | None]:
        """Every master of a cluster (each key lives on exactly one); [None] for a standalone server."""
        if not isinstance(self._client, RedisCluster):
            return [None]
        async with self._calls.bounded("keys"):  # which discovers the nodes first
            return list(self._client.get_primaries())

    async def _scan_step(self, node: ClusterNode | None, cursor: int, pattern: bytes) -> tuple[int, list[bytes]]:
        if node is None:
            assert isinstance(self._client, Redis)
            step, keys = await self._client.scan(cursor, match=pattern, count=SCAN_COUNT)
            return int(step), cast("list[bytes]", keys)
        assert isinstance(self._client, RedisCluster)
        # Aimed at one node, the cluster client answers ({node name: cursor}, keys).
        steps, found = cast("tuple[dict[str, int], list[bytes]]", await self._client.scan(
            cursor, match=pattern, count=SCAN_COUNT, target_nodes=node))
        return int(steps[node.name]), found

    # -- writes --------------------------------------------------------------------------------

    async def _write(self, what: str, commands: Sequence[Command]) -> list[Any]:
        """Queue the commands on their key's lane (before any await: see rediswriter) and wait for the answer."""
        if self._calls.closed:
            raise self._calls.failure(what, "the store is closed")
        done = self._lanes.submit(lane_of(commands[0][1][0], self._lanes.lanes), commands)
        return await self._calls.answer(what, done)

    async def _send(self, commands: list[Command]) -> list[Any]:
        """One lane's batch of writes, as one pipeline; durable (and on a cluster replicated) when it returns."""
        async with self._calls.bounded("write", after_close=True):
            if isinstance(self._client, RedisCluster):
                try:
                    return await write_replicated(self._client, commands, self._wait_ms, self._replicas)
                except NotReplicated as exc:
                    raise self._calls.failure("write", f"not acknowledged: {exc}") from None
            # Not a transaction (MULTI): one round trip, and each command applies whole.
            pipe = self._client.pipeline(transaction=False)
            for args, _ in commands:
                pipe.execute_command(*args)
            return list(await pipe.execute())

    async def set(self, key: Key, value: Value) -> None:
        stored = self._key(key)
        await self._write("set", [(("SET", stored, value), (stored,))])

    async def delete(self, key: Key) -> bool:
        stored = self._key(key)
        (removed,) = await self._write("delete", [(("DEL", stored), (stored,))])
        return bool(removed)

    async def set_many(self, items: Sequence[Item]) -> None:
        if not items:
            return
        if self._calls.closed:
            raise self._calls.failure("set_many", "the store is closed")
        # Later items win, as a run of single sets would have it. Each key goes on its key's lane, so it
        # lands in order with that key's other writes; an MSET per lane (per slot on a cluster). These
        # loops run per key of a bulk write: comprehensions and slices, no call per key where avoidable.
        prefix = self._prefix
        latest = {prefix + key.encode(): value for key, value in items}
        lanes = self._lanes.lanes
        by_lane: dict[int, dict[bytes, bytes]] = {0: latest}
        if lanes > 1:
            by_lane = {}
            for stored, value in latest.items():
                by_lane.setdefault(lane_of(stored, lanes), {})[stored] = value
        # Every part is queued before the first await, as a single write is.
        parts = [self._lanes.submit(lane, _msets(part, self._client)) for lane, part in by_lane.items()]
        for done in parts:
            await self._calls.answer("set_many", done)

    async def probe(self) -> None:
        """PING the server (on a cluster: every master) within the connect timeout."""
        async with self._calls.bounded("probe", self._settings.connect_timeout):
            if isinstance(self._client, RedisCluster):
                await self._client.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await self._client.ping()

    async def close(self) -> None:
        """Refuse new calls, let the writes already queued finish (each within its deadline), disconnect."""
        if self._calls.closed:
            return
        self._calls.closed = True
        await self._lanes.drained()
        await self._client.aclose()


def _msets(latest: dict[bytes, bytes], client: Client) -> list[Command]:
    """The items as MSETs of at most BATCH items, each within one slot on a cluster."""
    # isinstance against the cluster client walks its Protocol bases (microseconds): once, not per key.
    if isinstance(client, RedisCluster):
        groups: dict[int, dict[bytes, bytes]] = {}
        keyslot = client.keyslot
        for key, value in latest.items():
            groups.setdefault(keyslot(key), {})[key] = value
        return [command for group in groups.values() for command in _msets_of(list(group), list(group.values()))]
    return _msets_of(list(latest), list(latest.values()))


def _msets_of(keys: list[bytes], values: list[bytes]) -> list[Command]:
    # Sized by the average item, not item by item: one pass in C instead of a Python step per key.
    total = sum(map(len, values)) + sum(map(len, keys))
    size = max(1, min(MSET_ITEMS, len(keys) * MSET_BYTES // max(1, total)))
    commands: list[Command] = []
    for start in range(0, len(keys), size):
        batch = keys[start : start + size]
        arguments: list[Any] = [None] * (2 * len(batch))
        arguments[0::2], arguments[1::2] = batch, values[start : start + size]
        commands.append((("MSET", *arguments), batch))
    return commands
