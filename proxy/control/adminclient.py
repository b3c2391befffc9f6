"""The command line's way to a running proxy: where its admin API and KeyValue service answer, and
how a streamed admin job (Migrate, Verify) is followed to its result with a progress bar.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import grpc
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy import statedir
from proxy.admin.auth import read_token, with_token
from proxy.config import Config
from proxy.errors import BackendUnavailable, InvalidArgument
from proxy.progress import Progress
from proxy.statedir import ADMIN_ADDRESS_FILE, LISTEN_ADDRESS_FILE


def admin_target(config: Config) -> str:
    """The running proxy's admin address (see running_address)."""
    return running_address(config, config.admin_listen, ADMIN_ADDRESS_FILE)


def kv_target(config: Config) -> str:
    """The running proxy's KeyValue address (see running_address)."""
    return running_address(config, config.listen, LISTEN_ADDRESS_FILE)


def running_address(config: Config, configured: str, written: str) -> str:
    """The configured address, or, when it asks for any free port (:0), the one the proxy wrote down."""
    if configured.rpartition(":")[2] != "0":
        return configured
    return statedir.read_address(config.state_dir, written) or configured


class _SendToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the bearer token to every admin call (unary, and the streamed jobs Migrate and Verify)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: Any) -> Any:
        return _CallDetails(details.method, details.timeout, with_token(details.metadata, self._token),
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)


class _CallDetails(NamedTuple):
    """A call's details with other metadata (grpc.ClientCallDetails is abstract: it has no constructor)."""

    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


def admin_channel(config: Config, target: str | None = None) -> grpc.Channel:
    """A channel to the running proxy's admin API (or `target`) that sends the token of
    admin.token_file on every call when the config names one (ConfigError when it cannot be read)."""
    channel = grpc.insecure_channel(target or admin_target(config))
    if config.admin_token_file is None:
        return channel
    return grpc.intercept_channel(channel, _SendToken(read_token(config.admin_token_file)))


def admin_stub(config: Config) -> tuple[admin_pb2_grpc.AdminStub, grpc.Channel] | None:
    """The running proxy's admin API, or None when no proxy answers."""
    channel = admin_channel(config)
    stub = admin_pb2_grpc.AdminStub(channel)
    try:
        stub.Status(admin_pb2.StatusRequest(), timeout=2)
    except grpc.RpcError as exc:
        channel.close()
        if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            # A proxy answered: saying none did would send the operator looking in the wrong place.
            raise BackendUnavailable(f"the admin API at {admin_target(config)} refused the call: "
                                     f"{exc.details()}") from None
        return None
    return stub, channel


def follow(updates: Any, label: str) -> dict[str, Any]:
    """Draw a live job's progress and return its result."""
    progress = Progress(label, None)
    try:
        for update in updates:
            if update.error:
                raise BackendUnavailable(f"{label} failed in the proxy: {update.error}")
            progress.total = update.total or progress.total
            progress.advance(update.done - progress.done)
            if update.result_json:
                result: dict[str, Any] = json.loads(update.result_json)
                return result
    except grpc.RpcError as exc:  # the proxy refused the job, failed it, or went away
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidArgument(details) from None  # e.g. a bad --transform: the caller's to fix
        raise BackendUnavailable(f"{label} failed in the proxy: {details}") from None
    finally:
        progress.close()
    raise BackendUnavailable(f"{label}: the proxy ended the job without a result")
