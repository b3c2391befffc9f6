"""A real PostgreSQL server for the tests: initdb'd into a temporary folder on first use, stopped at
the end of the session.

PostgreSQL refuses to run as root, so when the tests run as root every server command runs as the
unprivileged `postgres` user, which owns the folder. The server listens on 127.0.0.1 on a port
picked free, with its unix socket inside the folder, so it never meets another helper's server.
Turnout reaches it over TCP as the role `turnout` with a password (scram-sha-256), so every test
exercises a DSN holding a secret.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy.backends.options import read_options
from proxy.backends.registry import STORE_TYPES
from proxy.config import BackendSpec

BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")
SERVER_USER = "postgres"
ROLE = DATABASE = "turnout"
START_TIMEOUT_S = 60


def _bin_dir() -> Path:
    for folder in BIN_DIRS:
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    pytest.fail("PostgreSQL's server binaries (initdb, pg_ctl, postgres) are missing: install the Debian "
                "package `postgresql` (apt-get install postgresql)", pytrace=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in a folder of its own; `stop()` and `start()` make an outage and end it."""

    folder: Path
    port: int = field(default_factory=_free_port)
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    host: str = "127.0.0.1"
    bin_dir: Path = field(default_factory=_bin_dir)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://{ROLE}:{self.password}@{self.host}:{self.port}/{DATABASE}"

    def _run(self, *args: str, stdin: str | None = None) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=START_TIMEOUT_S,
                              cwd=self.folder, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def create(self) -> None:
        """initdb, trust only the local socket, scram-sha-256 over TCP, then the turnout role and database."""
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SERVER_USER, "-E", "UTF8", "--locale=C", "-A", "trust")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.folder}'\n"
                       "password_encryption = 'scram-sha-256'\nmax_connections = 200\n")
        self.start()
        sql = (f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}';\n"
               f"CREATE DATABASE {DATABASE} OWNER {ROLE};\n")
        self._run("psql", "-v", "ON_ERROR_STOP=1", "-h", str(self.folder), "-p", str(self.port), "-U", SERVER_USER,
                  "-d", "postgres", "-q", stdin=sql)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
                  "-t", str(START_TIMEOUT_S), "start")

    def stop(self) -> None:
        """Stop the server at once: every open connection is ended, new ones are refused."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def spec(self, table: str, **raw: Any) -> BackendSpec:
        """A postgres spec on table, every option the registry declares read as config parsing reads it."""
        entry = STORE_TYPES["postgres"]
        options = read_options(entry.options, {"dsn": self.dsn, "table": table, **raw}, Path("."))
        assert entry.check_options is not None
        entry.check_options(options)
        return BackendSpec(type="postgres", options=options)

    def sql(self, statement: str, user: str = ROLE) -> str:
        """Run one statement over the local socket, as the turnout role unless told (another tool on the table)."""
        command = [str(self.bin_dir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.folder),
                   "-p", str(self.port), "-U", user, "-d", DATABASE, "-c", statement]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout.strip()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, started on first use and stopped (its folder removed) at the end."""
    folder = Path(tempfile.mkdtemp(prefix="turnout-pg-"))
    server = PostgresServer(folder)
    try:
        server.create()
        yield server
    finally:
        if server.running:
            with contextlib.suppress(RuntimeError):  # the folder goes either way
                server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_table(postgres_server: PostgresServer) -> Iterator[str]:
    """A table name no other test uses; the table is dropped afterwards when the store created it."""
    table = f"kv_{uuid.uuid4().hex[:16]}"
    yield table
    if not postgres_server.running:
        postgres_server.start()  # a test that stopped the server must not leave it down for the next
    postgres_server.sql(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture
def postgres_spec(postgres_server: PostgresServer, postgres_table: str) -> BackendSpec:
    """A postgres spec on a fresh table of the session's server (the store creates it on first use)."""
    return postgres_server.spec(postgres_table)
