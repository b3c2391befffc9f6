"""The rows of a postgres bulk write, and their COPY text made for the whole batch at once.

psycopg's `write_row` formats one row per Python call (about a sixth of a bulk load's CPU in
bench/migrate_servers.py); here the batch's keys and its documents are each joined into one buffer,
escaped as COPY's text format wants (backslash, tab, newline, carriage return) with a few
`bytes.replace` over the buffer, and cut back into rows, all at C speed. NUL joins them: a key
holding NUL is refused before (postgresdocs), and JSON text cannot hold a raw NUL; a batch that
holds one anyway goes row by row through psycopg, whose error then names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, repeat

#: COPY text format's escapes, backslash first (the others add backslashes of their own).
_ESCAPES = ((b"\\", b"\\\\"), (b"\t", b"\\t"), (b"\n", b"\\n"), (b"\r", b"\\r"))


@dataclass(frozen=True, slots=True)
class Rows:
    """The distinct keys of a bulk write and their documents (JSON text, UTF-8), in the same order."""

    keys: list[str]
    values: list[bytes]

    def texts(self) -> list[str]:
        """The documents as str, for statements that take them as parameters."""
        return [value.decode("utf-8") for value in self.values]

    def copy_text(self) -> bytes | None:
        """The rows in COPY's text format (key TAB document, one per line), or None when a raw NUL
        rules out the fast way (then write the rows one by one with psycopg)."""
        keys, values = "\x00".join(self.keys).encode("utf-8"), b"\x00".join(self.values)
        if keys.count(b"\x00") != len(self.keys) - 1 or values.count(b"\x00") != len(self.values) - 1:
            return None
        escaped_keys, escaped_values = _escaped(keys).split(b"\x00"), _escaped(values).split(b"\x00")
        return b"".join(chain.from_iterable(zip(escaped_keys, repeat(b"\t"), escaped_values, repeat(b"\n"),
                                                strict=False)))


def _escaped(text: bytes) -> bytes:
    for raw, escape in _ESCAPES:
        if raw in text:
            text = text.replace(raw, escape)
    return text
