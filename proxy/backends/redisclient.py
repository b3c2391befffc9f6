"""How a redis spec becomes a redis-py asyncio client, and how the client's failures become BackendUnavailable.

The client is made without touching the network (redis-py connects on the first command, a cluster
client discovers its nodes then), so opening a store whose server is down returns at once and the
proxy starts with the store unhealthy. Every call of the backend runs inside `Calls.bounded`: one
deadline for the whole call (waiting for a connection, connecting, retries, the reply), and one
place where an error is turned into BackendUnavailable with the password masked out of its text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.backends.serveroptions import cluster_nodes
from proxy.errors import BackendUnavailable
from proxy.secrets import mask

#: Retries of a call that met a broken or refused connection: a pooled connection left over from
#: before the server restarted fails once, and the retry reconnects, so the caller never sees it.
RETRIES = 3
#: The waits between those retries: short, since the whole call is bounded by the deadline anyway.
BACKOFF = ExponentialBackoff(cap=0.5, base=0.05)

Client = Redis | RedisCluster
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """The options of a redis spec, as config validation left them."""

    url: str
    key_prefix: str
    cluster: bool
    pool_size: int
    connect_timeout: float
    call_timeout: float

    #: More cluster nodes to start from ("host:port,..."), beside the url's.
    nodes: str = ""

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> RedisSettings:
        return cls(str(options["url"]), str(options["key_prefix"]), bool(options["cluster"]),
                   int(options["pool_size"]), float(options["connect_timeout"]), float(options["call_timeout"]),
                   str(options.get("nodes") or ""))

    @property
    def password(self) -> str:
        """The URL's password (masked out of every message), or "" when it has none."""
        return unquote(urlsplit(self.url).password or "")

    @property
    def address(self) -> str:
        """Where the server is, safe to show: host:port, or the socket path."""
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"

    @property
    def deadline(self) -> float:
        """The bound of one whole call: time to connect, then time for the call itself."""
        return self.connect_timeout + self.call_timeout


def make_client(settings: RedisSettings) -> Client:
    """The redis-py client of a spec; nothing is connected yet."""
    # decode_responses=False: keys and values cross as bytes, so any UTF-8 key (NUL included) and any
    # document comes back exactly as given.
    if settings.cluster:
        # The cluster client learns the topology from the first node that answers: with the url's
        # node alone, a proxy could not start (nor learn the cluster again) while that node is down.
        startup = [ClusterNode(host, port) for host, port in cluster_nodes(settings.nodes)] if settings.nodes else None
        return RedisCluster.from_url(
            settings.url, startup_nodes=startup, decode_responses=False, socket_timeout=settings.call_timeout,
            socket_connect_timeout=settings.connect_timeout,
            # Per node; the backend's semaphore keeps calls within pool_size, the rest is for discovery.
            max_connections=settings.pool_size + 4,
            retry=Retry(BACKOFF, RETRIES, (RedisConnectionError, RedisTimeoutError)))
    return Redis.from_url(
        settings.url, decode_responses=False, socket_timeout=settings.call_timeout,
        socket_connect_timeout=settings.connect_timeout, max_connections=settings.pool_size,
        retry=Retry(BACKOFF, RETRIES, (RedisConnectionError, RedisTimeoutError)))


class Calls:
    """Bounds the calls of one backend: at most pool_size at once, each within the deadline, errors translated."""

    def __init__(self, settings: RedisSettings, client: Client) -> None:
        self._settings = settings
        self._client = client
        self._discovery = asyncio.Lock()
        # The cluster client refuses a command outright when a node's connections are all busy,
        # so calls queue here instead, and a queued call still counts against its deadline.
        self._slots = asyncio.Semaphore(settings.pool_size)
        self.closed = False

    def where(self) -> str:
        kind = "redis cluster" if self._settings.cluster else "redis"
        return f"{kind} {self._settings.address}"

    def failure(self, what: str, why: str) -> BackendUnavailable:
        return BackendUnavailable(mask(f"{self.where()}: {what}: {why}", self._settings.password))

    @asynccontextmanager
    async def bounded(self, what: str, seconds: float | None = None, after_close: bool = False) -> AsyncIterator[None]:
        """Run one call (a get, one page of a scan) within the deadline; BackendUnavailable when it fails.

        after_close: for the writes close() lets finish, which run after new calls are refused.
        """
        if self.closed and not after_close:
            raise self.failure(what, "the store is closed")
        seconds = self._settings.deadline if seconds is None else seconds
        try:
            async with asyncio.timeout(seconds):
                async with self._slots:
                    if isinstance(self._client, RedisCluster):
                        await self._discovered(self._client)
                    yield
        except TimeoutError:
            raise self.failure(what, f"no answer within {seconds:g}s") from None
        # RedisClusterException (no node of the cluster reachable, ...) is not a RedisError.
        except (RedisError, RedisClusterException, OSError) as exc:
            raise self.failure(what, f"{type(exc).__name__}: {exc}") from None
        except AttributeError as exc:
            if not isinstance(self._client, RedisCluster):
                raise
            # redis-py's cluster client (8.1) can tear down a connection another call is still
            # using when it rediscovers the cluster after a node failed: that call then fails
            # inside redis-py like this. It is the node failure, not a bug of ours.
            raise self.failure(what, f"connection reset while the cluster was rediscovered ({exc})") from None

    async def _discovered(self, client: RedisCluster) -> None:
        """Let one call at a time discover the cluster's nodes.

        Calls that start together on a client that has not discovered the cluster yet make
        redis-py 8.1 break connections under each other's feet; one discovery first, behind
        this lock, and they do not. Once discovered, initialize() returns at once.
        """
        async with self._discovery:
            await client.initialize()

    async def answer(self, what: str, done: asyncio.Future[T]) -> T:
        """Wait for a queued write's answer within the deadline; the write goes on if the caller gives up."""
        try:
            async with asyncio.timeout(self._settings.deadline):
                return await asyncio.shield(done)
        except TimeoutError:
            raise self.failure(what, f"no answer within {self._settings.deadline:g}s") from None
