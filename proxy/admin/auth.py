"""The operators' bearer token (contract §5): read from `admin.token_file`, checked on every admin
call before its handler runs, and sent by everything that calls the admin API (the command line,
worker 0 relaying to the other workers).

When the config names a token file, the token is required on every admin call and page, on
loopback too: a token that guarded only some addresses would leave the others open to anyone on
the machine.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from proxy.errors import ConfigError

#: The metadata (and HTTP header) that carries the token, as `Bearer <token>`.
AUTHORIZATION = "authorization"
#: What a token may hold: visible ASCII without spaces, so that it travels unchanged as a header value.
_TOKEN_SHAPE = re.compile(r"[\x21-\x7e]+")


def read_token(path: Path) -> str:
    """The token held in `path` (surrounding whitespace ignored); ConfigError naming admin.token_file
    when it cannot be read, is empty, or is no single header-safe word."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"admin.token_file: cannot read {path}: {reason}") from None
    if not token:
        raise ConfigError(f"admin.token_file: {path} is empty: write the token in it")
    if not _TOKEN_SHAPE.fullmatch(token):
        raise ConfigError(f"admin.token_file: {path} must hold one word of visible ASCII (no spaces)")
    return token


def bearer(token: str) -> str:
    """The value of the authorization header or metadata that carries token."""
    return f"Bearer {token}"


def refusal(presented: str | None, token: str) -> str | None:
    """Why `presented` (an authorization value, or None when absent) does not carry token; None when it does."""
    if not presented:
        return "missing bearer token: send `authorization: Bearer <token>` (the token of admin.token_file)"
    scheme, _, credential = presented.strip().partition(" ")
    # compare_digest: the time taken must not tell a caller how much of its guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), token.encode()):
        return "wrong bearer token: send `authorization: Bearer <token>` (the token of admin.token_file)"
    return None


class RequireToken(aio.ServerInterceptor):
    """Refuses an admin call whose metadata lacks the token with UNAUTHENTICATED, before it runs."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        metadata = dict(handler_call_details.invocation_metadata or ())
        presented = metadata.get(AUTHORIZATION)
        why = refusal(presented if isinstance(presented, str) else None, self._token)
        handler = await continuation(handler_call_details)
        if why is None:
            return handler
        # An unknown method is refused the same way: without the token, a caller learns nothing.
        return _refusing(handler, why)


def _refusing(handler: grpc.RpcMethodHandler[Any, Any] | None, why: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that only refuses (the method's own never runs)."""
    refuse = _refuse_with(why)
    if handler is None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def _refuse_with(why: str) -> Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    async def refuse(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    return refuse


def with_token(metadata: Any, token: str) -> tuple[tuple[str, str], ...]:
    """A call's metadata with the bearer token in place of any authorization it had."""
    kept = tuple((key, value) for key, value in (metadata or ()) if key != AUTHORIZATION)
    return (*kept, (AUTHORIZATION, bearer(token)))


class SendToken(aio.UnaryUnaryClientInterceptor):
    """Adds the token to every unary call of a grpc.aio channel (worker 0's calls to the other workers)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation: Any, client_call_details: aio.ClientCallDetails,
                                    request: Any) -> Any:
        details = aio.ClientCallDetails(
            client_call_details.method, client_call_details.timeout,
            aio.Metadata(*with_token(client_call_details.metadata, self._token)),
            client_call_details.credentials, client_call_details.wait_for_ready)
        return await continuation(details, request)
