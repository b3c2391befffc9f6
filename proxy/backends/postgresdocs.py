"""What PostgreSQL cannot hold of what the proxy accepts: keys and documents a postgres store refuses.

The proxy's own rules (proxy/jsonvalue.py) already keep out what no store can hold. PostgreSQL adds
three limits of its own, found by trying them on a server: `text` cannot hold U+0000, `jsonb`
refuses the escape `\\u0000` inside a string, and a jsonb number is a `numeric`, which holds at most
131072 digits before the decimal point and 16383 after it (`1e-16384` is refused, although a JSON
parser reads it as 0.0). A postgres store refuses such a key or document before writing anything,
and `turnout validate` asks here to list what a postgres target would refuse.

No psycopg here: validating imports this module without loading a driver.
"""

from __future__ import annotations

import json
import re

#: numeric's limits: digits before and after the decimal point.
MAX_INTEGER_DIGITS = 131072
MAX_FRACTION_DIGITS = 16383

NUL_KEY = "the key holds U+0000 (NUL), which a PostgreSQL text column cannot hold"
SURROGATE_KEY = "the key holds a lone surrogate (\\ud800-\\udfff), which is not Unicode and has no UTF-8 form"
NUL_STRING = "a string holds \\u0000 (NUL), which PostgreSQL jsonb cannot hold"
NUMBER_RANGE = (f"a number needs more than {MAX_FRACTION_DIGITS} digits after the decimal point or "
                f"{MAX_INTEGER_DIGITS} before it, which PostgreSQL jsonb (numeric) cannot hold")

# A run of backslashes then u0000: the escape only when the run is odd (`\\u0000` is a backslash and "u0000").
_NUL_ESCAPE = re.compile(rb"(\\+)u0000")
# A number needs a closer look only with a negative exponent of five digits or more, or else (an
# exponent of at most 9999 leaves 16383 - 9999 digits to fill) a run of over 6384 digits. Positive
# exponents past numeric's range are past a double's too, which the proxy's own rules refuse.
_SMALL_EXPONENT = re.compile(rb"[eE]-0*[1-9][0-9]{4}")
# A run of 6385 digits or more covers a whole block of this size, wherever it starts: checking each
# block with bytes.isdigit runs at C speed, where a regex for a long run costs ~10 ns a byte.
_DIGIT_BLOCK = 3192
_NUMBER = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")


def key_refusal(key: str) -> str | None:
    """Why a postgres store cannot hold this key, or None when it can."""
    if "\x00" in key:
        return NUL_KEY
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return SURROGATE_KEY  # refused alone here, not failing a whole batch of writes at the driver
    return None


def value_refusal(value: bytes) -> str | None:
    """Why a postgres store cannot hold this JSON document (already valid JSON), or None when it can."""
    if b"u0000" in value and any(len(m[1]) % 2 for m in _NUL_ESCAPE.finditer(value)):
        return NUL_STRING
    if _may_hold_a_long_number(value) and _number_out_of_range(value):
        return NUMBER_RANGE
    return None


def _may_hold_a_long_number(value: bytes) -> bool:
    if (b"e-" in value or b"E-" in value) and _SMALL_EXPONENT.search(value):
        return True
    if len(value) < 2 * _DIGIT_BLOCK:
        return False  # too short for such a run: most documents stop here
    return any(value[start : start + _DIGIT_BLOCK].isdigit()
               for start in range(0, len(value) - _DIGIT_BLOCK + 1, _DIGIT_BLOCK))


def batch_refusal(keys: list[str], values: list[bytes]) -> tuple[str, str] | None:
    """(key, why) of the first item of a bulk write a postgres store cannot hold, or None for none.

    The same rules as key_refusal and value_refusal, asked of the whole batch joined first: at C speed
    most batches hold no NUL, no non-ASCII key, no small exponent and no long document, and only a
    batch that does is checked item by item (per item they cost ~30 % of a bulk load's CPU)."""
    joined_keys, joined_values = "".join(keys), b"".join(values)
    suspect = ("\x00" in joined_keys or not joined_keys.isascii() or b"u0000" in joined_values
               or b"e-" in joined_values or b"E-" in joined_values
               or max(map(len, values), default=0) >= 2 * _DIGIT_BLOCK)
    if not suspect:
        return None
    for key, value in zip(keys, values, strict=True):
        why = key_refusal(key) or value_refusal(value)
        if why is not None:
            return key, why
    return None


def refusal(key: str, value: bytes | None = None) -> str | None:
    """Why a postgres store cannot hold this key (and document, when given), or None when it can."""
    return key_refusal(key) or (value_refusal(value) if value is not None else None)


def number_fits(literal: str) -> bool:
    """True when jsonb's numeric holds the JSON number literal exactly as written."""
    match = _NUMBER.fullmatch(literal)
    if match is None:
        return True  # not a number literal: not this rule's to refuse
    integer, fraction, exponent = match[1].lstrip("0"), match[2] or "", int(match[3] or 0)
    return len(fraction) - exponent <= MAX_FRACTION_DIGITS and len(integer) + exponent <= MAX_INTEGER_DIGITS


class _OutOfRange(Exception):
    pass


def _number_out_of_range(value: bytes) -> bool:
    """Read the document with every number kept as its literal, and check each against numeric's range."""

    def check(literal: str) -> object:
        if not number_fits(literal):
            raise _OutOfRange
        return None

    try:
        json.loads(value, parse_float=check, parse_int=check)
    except _OutOfRange:
        return True
    except ValueError:
        return False  # not JSON at all: the proxy's own rules refuse it first
    return False


#: validate's finding name for each refusal above.
KINDS = {NUL_KEY: "key_holds_nul", SURROGATE_KEY: "key_not_unicode", NUL_STRING: "string_holds_nul",
         NUMBER_RANGE: "number_beyond_numeric"}


def refusal_kind(key: str, value: bytes) -> tuple[str, str] | None:
    """(finding name, detail) of what a postgres store would refuse of this key and document, or None."""
    why = refusal(key, value)
    return None if why is None else (KINDS[why], why)
