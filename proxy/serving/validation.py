"""Input checks of the wire contract (§1): a key and a value are accepted whole or not at all."""

from __future__ import annotations

from proxy.config import MAX_KEY_BYTES
from proxy.errors import InvalidArgument
from proxy.jsonvalue import DocumentError, check_document


def check_key(key: str) -> None:
    if not key:
        raise InvalidArgument("key: must not be empty")
    # Cheap bound first: a str of n code points encodes to at least n and at most 4n UTF-8 bytes.
    if len(key) > MAX_KEY_BYTES or (len(key) * 4 > MAX_KEY_BYTES and len(key.encode()) > MAX_KEY_BYTES):
        raise InvalidArgument(f"key: at most {MAX_KEY_BYTES} UTF-8 bytes, got {len(key.encode())}")


def check_value(value: bytes, max_value_bytes: int) -> None:
    """The value must be one JSON document in UTF-8 within the size limit that every store can hold
    (proxy/jsonvalue.py: the same rules validate applies to what is stored)."""
    if len(value) > max_value_bytes:
        raise InvalidArgument(f"value: at most {max_value_bytes} bytes, got {len(value)}")
    try:
        check_document(value)
    except DocumentError as exc:
        raise InvalidArgument(f"value: {exc}") from None
