"""The gRPC channel to an upstream KeyValue service, and what its failures mean to the proxy.

The channel carries gRPC's own retry policy (a service config) rather than a loop of ours, so a
retried attempt is sent by the library that knows whether the previous one left the client, and the
call's deadline bounds every attempt together. What is retried, and why:

- Get, Has and Keys only read. Keys is a stream: gRPC retries a stream only until its first message
  arrives, so no key is ever listed twice.
- Set is retried: storing the same document again leaves the same state, and the backend holds the
  key's turn (upstream_order) for the whole call, so no later write of this proxy can slip between
  two attempts.
- Delete is not: a second attempt after one that removed the key in transit would answer
  `existed=false`, a wrong answer where the caller needs the truth (a write path, a migration).
  gRPC still re-sends, on its own, an attempt that never left the client (transparent retry), which
  is the common case of a server that is down or restarting.

Only UNAVAILABLE is retried: it is the one status that says the call may not have been served.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from turnout.kv.v1 import kv_pb2

from proxy.errors import BackendUnavailable, ConfigError, InvalidArgument

KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KeyValue"].full_name
#: gRPC treats more than 5 attempts as 5: more retries than this would be a silent lie of the config.
MAX_RETRIES = 4
#: The retry buffer of one call: a Set larger than this is sent once, never retried (gRPC cannot
#: re-send what it did not keep). Room for the contract's default 4 MiB document and its framing.
_RETRY_BUFFER_PER_CALL = 5 * 1024 * 1024
#: The retry buffer of the whole channel: bounds the memory that many large Sets in flight hold.
_RETRY_BUFFER_PER_CHANNEL = 64 * 1024 * 1024


def service_config(retries: int) -> str:
    """The channel's service config: Get, Has, Keys and Set retried on UNAVAILABLE, `retries` times at most."""
    retry = {
        "maxAttempts": min(retries, MAX_RETRIES) + 1,
        "initialBackoff": "0.05s",
        "maxBackoff": "0.5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    retried = [{"service": KV_SERVICE, "method": method} for method in ("Get", "Has", "Keys", "Set")]
    return json.dumps({"methodConfig": [{"name": retried, "retryPolicy": retry}]})


def channel_options(retries: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.service_config", service_config(retries)),
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", _RETRY_BUFFER_PER_CALL),
        ("grpc.retry_buffer_size", _RETRY_BUFFER_PER_CHANNEL),
        # No size limit of the channel's own: the upstream's max_value_bytes is the one limit, and a
        # document stored there past 4 MiB (gRPC's default) must still be read back.
        ("grpc.max_receive_message_length", -1),
        ("grpc.max_send_message_length", -1),
        # Reconnect soon after the server returns (gRPC's default starts at 1 s and grows to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # Notice a connection that died without a word (a machine gone, a partition) while calls wait
        # on it. Only while calls are under way: gRPC servers refuse frequent pings on idle connections.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 0),
    ]


def open_channel(options: Mapping[str, Any]) -> aio.Channel:
    """A channel to the spec's target (connected lazily: this never waits for the server)."""
    target = str(options["target"])
    settings = channel_options(int(options["retries"]))
    if options.get("ca_file") is None:
        return aio.insecure_channel(target, options=settings)
    return aio.secure_channel(target, credentials(options), options=settings)


def credentials(options: Mapping[str, Any]) -> grpc.ChannelCredentials:
    """TLS trusting ca_file, with the client certificate of cert_file and key_file for an upstream asking mTLS."""
    ca = _read(options["ca_file"], "ca_file")
    cert_file, key_file = options.get("cert_file"), options.get("key_file")
    if cert_file is None or key_file is None:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=_read(key_file, "key_file"),
                                        certificate_chain=_read(cert_file, "cert_file"))


def _read(path: Path, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"grpc store {option}: cannot read {path}: {exc.strerror or exc}") from None


def failure(exc: aio.AioRpcError, target: str, call: str) -> Exception:
    """The proxy's error for an upstream call's failure: its refusal of bad input stays InvalidArgument
    (with the upstream's own words); anything else means the store could not serve the call."""
    code = exc.code()
    details = exc.details() or ""
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(details)
    # UNAVAILABLE covers a read_only upstream too (contract §1); its message says so and is kept.
    return BackendUnavailable(f"grpc store {target}: {call} failed: {code.name}: {details}".rstrip(": "))
