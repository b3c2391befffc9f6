"""The Turnout client: generated KeyValue stubs (turnout.kv.v1) and a small typed client."""

from turnout.client import (
    AsyncClient,
    DeadlineExceeded,
    InvalidArgument,
    KeyNotFound,
    RetryPolicy,
    SyncClient,
    TlsSettings,
    TurnoutError,
    Unavailable,
)

__all__ = [
    "AsyncClient",
    "DeadlineExceeded",
    "InvalidArgument",
    "KeyNotFound",
    "RetryPolicy",
    "SyncClient",
    "TlsSettings",
    "TurnoutError",
    "Unavailable",
]
