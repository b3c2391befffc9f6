"""Input checks of the wire contract (§1): a key and a value are accepted whole or not at all."""

from __future__ import annotations

import json

from proxy.config import MAX_KEY_BYTES
from proxy.errors import InvalidArgument


def check_key(key: str) -> None:
    if not key:
        raise InvalidArgument("key: must not be empty")
    # Cheap bound first: a str of n code points encodes to at least n and at most 4n UTF-8 bytes.
    if len(key) > MAX_KEY_BYTES or (len(key) * 4 > MAX_KEY_BYTES and len(key.encode()) > MAX_KEY_BYTES):
        raise InvalidArgument(f"key: at most {MAX_KEY_BYTES} UTF-8 bytes, got {len(key.encode())}")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def check_value(value: bytes, max_value_bytes: int) -> None:
    """The value must be one JSON document in UTF-8 within the size limit."""
    if len(value) > max_value_bytes:
        raise InvalidArgument(f"value: at most {max_value_bytes} bytes, got {len(value)}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"value: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        # parse_constant rejects NaN and Infinity, which Python's json accepts but JSON does not.
        json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"value: not one JSON document ({exc})") from None
