"""The few expected errors of the proxy; server.py maps each to one gRPC status code.

Anything else that escapes a request is a programming error and becomes INTERNAL.
"""

from __future__ import annotations


class TurnoutError(Exception):
    """Base of every expected error: its message is safe to show to the caller."""


class InvalidArgument(TurnoutError):
    """The request is malformed (bad key, not one JSON document, too large): nothing was written."""


class BackendUnavailable(TurnoutError):
    """A backend could not be reached or failed an operation."""


class ReadOnly(TurnoutError):
    """Writes are paused by the flags (`read_only: true`)."""


class ConfigError(TurnoutError):
    """A config or flag file is invalid; the message names the field."""


class StoreLocked(BackendUnavailable):
    """Another process holds the store's advisory lock."""
