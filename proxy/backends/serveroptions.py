"""The checks of the server stores' options that no single field's kind can make.

Kept apart from the stores themselves so that validating a config (`turnout check-config`, the
start of `turnout serve`) never imports psycopg, redis-py or a second gRPC channel.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

# One SQL identifier, optionally schema-qualified: interpolated into statements, so nothing else.
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_LIBPQ_KEYWORD = re.compile(r"^[A-Za-z_]+\s*=")


def check_postgres(options: Mapping[str, object]) -> None:
    table = str(options["table"])
    if not _TABLE.match(table):
        raise ValueError(f"table: must be an SQL name (letters, digits, _; optionally schema.table), got {table!r}")
    dsn = str(options["dsn"]).strip()
    if not dsn:
        raise ValueError("dsn: must not be empty")
    # The two forms libpq reads; anything else would only fail once the pool tries to connect.
    if urlsplit(dsn).scheme not in _POSTGRES_SCHEMES and not _LIBPQ_KEYWORD.match(dsn):
        raise ValueError("dsn: must be a postgresql:// URL or libpq key=value pairs (host=... dbname=...)")


def check_redis(options: Mapping[str, object]) -> None:
    url = str(options["url"])
    scheme = urlsplit(url).scheme
    if scheme not in _REDIS_SCHEMES:
        raise ValueError(f"url: must start with {', '.join(s + '://' for s in _REDIS_SCHEMES)} (got scheme {scheme!r})")
    if options["cluster"] and scheme == "unix":
        raise ValueError("cluster: a Redis Cluster is reached over TCP, not a unix socket")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number in range)
    except ValueError:
        raise ValueError("url: the port must be a number from 0 to 65535") from None
    if options["cluster"] and scheme != "unix" and parts.path.strip("/") not in ("", "0"):
        # The URL is not quoted back: it may hold a password.
        raise ValueError(f"url: a Redis Cluster has database 0 only, the URL names /{parts.path.strip('/')}")
    nodes = str(options.get("nodes") or "")
    if nodes:
        if not options["cluster"]:
            raise ValueError("nodes: more nodes to start from are for a Redis Cluster (cluster: true)")
        cluster_nodes(nodes)


def cluster_nodes(nodes: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a `nodes` option ("host:port,host:port"); ValueError naming a bad one."""
    found: list[tuple[str, int]] = []
    for item in (part.strip() for part in nodes.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"nodes: each must be host:port, got {item!r}")
        found.append((host.strip("[]"), int(port)))
    return found


#: gRPC makes at most 5 attempts of a call, whatever its retry policy asks.
_MAX_UPSTREAM_RETRIES = 4


def check_upstream(options: Mapping[str, object]) -> None:
    target = str(options["target"])
    if not target.startswith("unix:"):
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"target: must be host:port (or unix:PATH), got {target!r}")
    retries = options.get("retries")
    if isinstance(retries, int) and retries > _MAX_UPSTREAM_RETRIES:
        raise ValueError(f"retries: gRPC makes at most {_MAX_UPSTREAM_RETRIES + 1} attempts of a call, "
                         f"so at most {_MAX_UPSTREAM_RETRIES}, got {retries}")
    if (options.get("cert_file") is None) != (options.get("key_file") is None):
        raise ValueError("cert_file: a client certificate needs both cert_file and key_file")
    if options.get("cert_file") is not None and options.get("ca_file") is None:
        raise ValueError("cert_file: a client certificate is shown over TLS only: set ca_file too")
