"""Real redis-server processes for the test session: one standalone server and one Redis Cluster.

Both are started on first use, listen on 127.0.0.1 on free ports, keep their data in a temporary
folder and require a password (so tests can check it never shows in an error). Every write is
fsynced before the server answers (appendonly, appendfsync always), as the Backend protocol asks.
Each process is stopped by its pid when the session ends. The cluster is 3 masters with a replica
each; tests may stop a node, start it again and fail a master over, and get the cluster back whole.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.backends.options import read_options
from proxy.backends.registry import STORE_TYPES
from proxy.config import BackendSpec

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"
PASSWORD = "s3cret-redis-pw"
#: How long a cluster master may be silent before its replica takes over: short, so failover tests are quick.
NODE_TIMEOUT_MS = 1500
_STARTUP_SECONDS = 20.0


def _binaries() -> None:
    for binary in (REDIS_SERVER, REDIS_CLI):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is missing: install the Debian package redis-server (apt-get install redis-server); "
                        "the redis backend tests need a real server", pytrace=False)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(with_bus: bool = False) -> int:
    """A port free on 127.0.0.1 now; with_bus, port + 10000 too (a cluster node's bus port)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 <= 65535 and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait(condition: Any, what: str, seconds: float = _STARTUP_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class RedisNode:
    """One redis-server process: its port, its folder, and its pid while it runs."""

    port: int
    folder: Path
    cluster: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def args(self) -> list[str]:
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
                "--daemonize", "no", "--protected-mode", "no", "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--requirepass", PASSWORD, "--logfile", str(self.folder / "redis.log")]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.folder / "nodes.conf"),
                     "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--masterauth", PASSWORD]
        return args

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A plain synchronous client of this one node, for the fixtures' own checks and admin."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, socket_timeout=timeout,
                           socket_connect_timeout=timeout)

    def command(self, *args: str | int | bytes) -> Any:
        with self.client() as client:
            return client.execute_command(*args)

    def start(self) -> None:
        if self.running:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        _wait(lambda: self._answers(), f"redis-server on port {self.port} (log: {self.folder / 'redis.log'})")

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} exited; see {self.folder / 'redis.log'}")
        return bool(self.command("PING"))

    def freeze(self) -> None:
        """SIGSTOP the process: it holds its connections open and answers nothing (a hung server)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self, kill: bool = False) -> None:
        """Stop the process by its pid: SIGTERM (a clean shutdown) or SIGKILL (a crash)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)  # a frozen server could not act on SIGTERM
        os.kill(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


def _url(port: int) -> str:
    return f"redis://:{PASSWORD}@127.0.0.1:{port}/0"


def spec_of(url: str, cluster: bool, **options: Any) -> BackendSpec:
    """A redis spec with a fresh key prefix, options read as config parsing reads them (defaults alike)."""
    raw: dict[str, Any] = {"url": url, "key_prefix": f"t{uuid.uuid4().hex[:12]}:", "cluster": cluster, **options}
    return BackendSpec(type="redis", options=read_options(STORE_TYPES["redis"].options, raw, Path(".")))


@dataclass
class RedisServer:
    """The session's standalone server."""

    node: RedisNode

    @property
    def url(self) -> str:
        return _url(self.node.port)

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def pid(self) -> int | None:
        return self.node.pid

    @property
    def running(self) -> bool:
        return self.node.running

    def spec(self, **options: Any) -> BackendSpec:
        return spec_of(self.url, False, **options)

    def stop(self, kill: bool = False) -> None:
        self.node.stop(kill)

    def start(self) -> None:
        self.node.start()


@dataclass
class RedisClusterServers:
    """The session's Redis Cluster: six nodes, three of them masters at any time."""

    nodes: list[RedisNode]

    @property
    def url(self) -> str:
        """The address the backend is given: one node; the client finds the others from it."""
        return _url(self.nodes[0].port)

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def pids(self) -> list[int | None]:
        return [node.pid for node in self.nodes]

    def spec(self, **options: Any) -> BackendSpec:
        """A cluster spec that starts from any of the six nodes, so a store opens whichever is down."""
        nodes = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return spec_of(self.url, True, **{"nodes": nodes, **options})

    def node_at(self, port: int) -> RedisNode:
        return next(node for node in self.nodes if node.port == port)

    def masters(self) -> list[RedisNode]:
        """The running nodes that say they are masters, by their own INFO."""
        return [node for node in self.nodes if node.running and node.command("ROLE")[0] == b"master"]

    def replica_of(self, master: RedisNode) -> RedisNode:
        for node in self.nodes:
            if node is master or not node.running:
                continue
            role = node.command("ROLE")
            if role[0] == b"slave" and int(role[2]) == master.port:
                return node
        raise RuntimeError(f"no running replica of port {master.port}")

    def master_of(self, key: bytes) -> RedisNode:
        """The master serving the slot of a (full, prefixed) key right now."""
        asked = self.masters()[0]
        slot = int(asked.command("CLUSTER", "KEYSLOT", key))
        for start, end, primary, *_ in asked.command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return self.node_at(int(primary[1]))
        raise RuntimeError(f"no master for slot {slot}")

    def nodes_running(self) -> list[RedisNode]:
        return [node for node in self.nodes if node.running]

    def wait_ok(self, seconds: float = _STARTUP_SECONDS) -> None:
        """Wait until every running node says cluster_state:ok, three masters serve, each with a replica when all run."""

        def whole() -> bool:
            for node in self.nodes_running():
                if b"cluster_state:ok" not in node.command("CLUSTER", "INFO"):
                    return False
            masters = self.masters()
            if len(masters) != 3:
                return False
            if all(node.running for node in self.nodes):
                for master in masters:
                    self.replica_of(master)
                    links = master.command("INFO", "replication")  # parsed by redis-py into a dict
                    if links.get("slave0", {}).get("state") != "online":
                        return False
            return True

        _wait(whole, "the redis cluster to be whole (cluster_state:ok)", seconds)

    def stop_node(self, node: RedisNode, kill: bool = False) -> None:
        node.stop(kill)

    def start_node(self, node: RedisNode) -> None:
        node.start()

    def fail_over(self, master: RedisNode) -> RedisNode:
        """Promote the master's replica by CLUSTER FAILOVER (no write lost); returns the new master."""
        replica = self.replica_of(master)
        replica.command("CLUSTER", "FAILOVER")
        _wait(lambda: replica.command("ROLE")[0] == b"master", f"port {replica.port} to become master")
        self.wait_ok()
        return replica

    def crash_master(self, master: RedisNode, replica: RedisNode | None = None) -> RedisNode:
        """SIGKILL a master and wait until its replica (thawed if frozen) is promoted; returns the new master.

        The old master stays down until restore().
        """
        replica = replica or self.replica_of(master)
        master.stop(kill=True)
        replica.thaw()
        _wait(lambda: replica.command("ROLE")[0] == b"master", f"port {replica.port} to be promoted",
              seconds=NODE_TIMEOUT_MS / 1000 * 10)
        _wait(lambda: b"cluster_state:ok" in replica.command("CLUSTER", "INFO"), "cluster_state:ok after failover")
        return replica

    def restore(self) -> None:
        """Start every stopped node again (an old master comes back as a replica) and wait for a whole cluster."""
        for node in self.nodes:
            node.start()
        self.wait_ok()


def start_cluster(folder: Path) -> RedisClusterServers:
    """Six cluster nodes in folder, joined as 3 masters with a replica each; the caller stops them."""
    cluster = RedisClusterServers([RedisNode(free_port(with_bus=True), folder / f"node{i}", cluster=True)
                                   for i in range(6)])
    try:
        for node in cluster.nodes:
            node.start()
        subprocess.run([REDIS_CLI, "-a", PASSWORD, "--no-auth-warning", "--cluster", "create",
                        *(f"127.0.0.1:{node.port}" for node in cluster.nodes), "--cluster-replicas", "1",
                        "--cluster-yes"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        cluster.wait_ok(60)
    except BaseException:
        for node in cluster.nodes:
            node.stop(kill=True)
        raise
    return cluster


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A standalone redis-server for the session, with a password and fsync on every write."""
    _binaries()
    folder = Path(tempfile.mkdtemp(prefix="turnout-redis-"))
    server = RedisServer(RedisNode(free_port(), folder))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of 3 masters and 3 replicas for the session."""
    _binaries()
    folder = Path(tempfile.mkdtemp(prefix="turnout-redis-cluster-"))
    try:
        cluster = start_cluster(folder)
        try:
            yield cluster
        finally:
            for node in cluster.nodes:
                node.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def redis_spec(redis_server: RedisServer) -> BackendSpec:
    """A redis spec on the session's standalone server, with a key prefix no other test uses."""
    if not redis_server.node.running:
        redis_server.start()
    return redis_server.spec()


@pytest.fixture
def redis_cluster_spec(redis_cluster: RedisClusterServers) -> BackendSpec:
    """A `cluster: true` redis spec on the session's cluster, with a key prefix no other test uses."""
    return redis_cluster.spec()
