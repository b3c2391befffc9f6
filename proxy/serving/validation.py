"""Input checks of the wire contract (§1): a key and a value are accepted whole or not at all."""

from __future__ import annotations

from proxy.config import MAX_KEY_BYTES
from proxy.errors import InvalidArgument
from proxy.jsonvalue import DocumentError


def check_key(key: str) -> None:
    if not key:
        raise InvalidArgument("key: must not be empty")
    # Cheap bound first: a str of n code points encodes to at least n and at most 4n UTF-8 bytes.
    if len(key) > MAX_KEY_BYTES or (len(key) * 4 > MAX_KEY_BYTES and len(key.encode()) > MAX_KEY_BYTES):
        raise InvalidArgument(f"key: at most {MAX_KEY_BYTES} UTF-8 bytes, got {len(key.encode())}")


def too_large(value: bytes, max_value_bytes: int) -> InvalidArgument:
    return InvalidArgument(f"value: at most {max_value_bytes} bytes, got {len(value)}")


def not_a_document(problem: DocumentError) -> InvalidArgument:
    return InvalidArgument(f"value: {problem}")


# A value must be one JSON document in UTF-8 within the size limit that every store can hold
# (proxy/jsonvalue.py: the same rules validate applies to what is stored). Set checks it in line,
# `len(value) > max_value_bytes` and then check_document, each failure raised as the error above:
# a function around the two would cost every Set a call.
