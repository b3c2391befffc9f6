"""The canonical form behind every content checksum gives the same bytes as it always has.

Checksums are kept (verify records in state_dir, an archive's trailer, `turnout status --records`),
so the fast msgspec path of `canonical` must write exactly what the standard library wrote for
every input, JSON or not: these tests hold it to a frozen copy of that original definition and to
checksums recorded from it before msgspec was used.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.migration.checksum import canonical, item_hash

_original_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_original_decode = json.JSONDecoder().decode


def original_canonical(value: bytes) -> bytes:
    """The definition as it was first written, kept here on its own so that a change to the one in
    proxy/migration/checksum.py shows up as a failure. Called the same way (the same Python frames
    between the caller and the parser), so it stops at the same depth near the recursion limit."""
    try:
        return _original_encoder.encode(_original_decode(value.decode("utf-8"))).encode()
    except (ValueError, RecursionError):
        return value


#: Every code point, lone surrogates included (a legacy store may hold them, escaped).
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=8)
scalars = (
    st.none() | st.booleans()
    | st.integers() | st.integers(-(10**40), 10**40) | st.sampled_from([2**63 - 1, 2**63, -(2**63), 2**64, -(2**64) - 1])
    | st.floats() | st.sampled_from([1e16, 1e15, 1e-5, 1e-4, -0.0, 5e-324, 1.7976931348623157e308, 0.1, 1e22, 123456789.0])
    | any_text
)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=16,
)


@st.composite
def written(draw: st.DrawFn) -> bytes:
    """A document as some writer may have put it in a store: compact or not, escaped or not."""
    document: Any = draw(documents)
    text = json.dumps(document, ensure_ascii=draw(st.booleans()), sort_keys=draw(st.booleans()),
                      indent=draw(st.sampled_from([None, 1])),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")])))
    # surrogatepass: a lone surrogate written unescaped becomes bytes that are not UTF-8.
    return text.encode("utf-8", "surrogatepass")


#: Number literals JSON allows, and some it does not, with exponents past a double's range.
number_literals = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,4})?", fullmatch=True) \
    | st.from_regex(r"[-+]?[0-9]{1,5}\.?([eE][+-]?)?[0-9]{0,3}", fullmatch=True)


def assert_unchanged(value: bytes) -> None:
    assert canonical(value) == original_canonical(value), value


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(written())
@example(b'{"b":1,"a":2,"b":3}')  # a repeated member: the last one counts, in both
@example('{"z":1,"\u00e9":2,"\U0001f600":3,"\ufffd":4,"\ud7ff":5}'.encode())  # sorted by code point
@example(b'"\\ud800"')  # an escaped lone surrogate: read by the standard library, not writable as UTF-8
@example(b'"\xed\xa0\x80"')  # the same surrogate unescaped: not UTF-8
@example(b'"\\u0000\\u001f\\u007f\xe2\x80\xa8\\b\\f\\n\\r\\t\\"\\\\/"')  # every escape
@example(b'"a\nb"')  # a raw control character in a string: not JSON
@example(b'\xef\xbb\xbf{}')  # a byte order mark
@example(b'[NaN, Infinity, -Infinity]')
@example(b' [1 , 2 ]\n')
def test_canonical_form_is_the_original_for_written_documents(value: bytes) -> None:
    assert_unchanged(value)


@settings(max_examples=1000, deadline=None)
@given(number_literals, st.sampled_from(["{}", "[{}]", '{{"n":{}}}', "[1,{}]"]))
@example("1e16", "{}")
@example("1e-5", "{}")
@example("-0.0", "{}")
@example("-0", "{}")
@example("1E400", "{}")
@example("-1e400", "[{}]")
@example("1e-400", "{}")
@example("100000000000000000000.0", "{}")
@example("1.00000000000000000000000001", "{}")
@example("9" * 4300, "{}")  # the most digits Python reads as an int
@example("9" * 4301, "{}")  # one more: not read, so kept as bytes
@example("01", "{}")
@example("1.", "{}")
def test_canonical_form_is_the_original_for_number_literals(literal: str, shape: str) -> None:
    assert_unchanged(shape.format(literal).encode())


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_canonical_form_is_the_original_for_arbitrary_bytes(value: bytes) -> None:
    assert_unchanged(value)


@settings(max_examples=300, deadline=None)
@given(written(), st.data())
def test_canonical_form_is_the_original_for_damaged_documents(value: bytes, data: st.DataObject) -> None:
    """One byte changed, dropped or added: JSON still, or not, the result is the original's."""
    at = data.draw(st.integers(0, len(value)))
    byte = bytes([data.draw(st.integers(0, 255))])
    damaged = data.draw(st.sampled_from([value[:at] + byte + value[at + 1:], value[:at] + value[at + 1:],
                                         value[:at] + byte + value[at:]]))
    assert_unchanged(damaged)


def test_canonical_form_is_the_original_at_every_depth() -> None:
    """msgspec and the standard library stop a few levels apart near the recursion limit: documents
    that deep are kept as bytes exactly when they always were (where the limit falls depends on how
    deep the caller's stack is, so every depth up to past it is tried)."""
    for depth in [*range(240, 1010), 5000]:
        assert_unchanged(b"[ " * depth + b"]" * depth)
        assert_unchanged(b'{"a": ' * depth + b"1" + b"}" * depth)
    assert_unchanged(b"[" + b", ".join([b"[1]"] * 600) + b"]")  # many containers, shallow


def test_checksums_recorded_before_msgspec_are_unchanged() -> None:
    """item_hash values computed by the standard-library-only definition (kept in archives and
    verify records): a key, a NUL and the canonical form, SHA-256, the first 8 bytes."""
    recorded = {
        ("user:00000001", b'{"id": 1, "name": "user 1", "tags": ["a", "b"]}'): 0x526815fd8cf280c8,
        ("f", b"[1e16, -0.0, 0.1, 1e-05, 123456789012345678901234567890]"): 0x1d3d272e40036c7c,
        ("u", b'{"\\u00e9": "\\ud83d\\ude00", "a": "\\u0000\n"}'): 0x8cc9301ec13cd5e2,
        ("n", b"[NaN, 1e400]"): 0x7386ee2688d5b601,
        ("s", b'"\\ud800"'): 0x6d3cbe07ba06358e,
        ("x", b"not json"): 0x7dbe3c9a670e05a3,
    }
    for (key, value), checksum in recorded.items():
        assert item_hash(key, value) == checksum, (key, value)


def test_floats_are_written_as_python_writes_them() -> None:
    """Where msgspec alone would write 1e16 and 1e-5, the canonical form keeps 1e+16 and 1e-05."""
    assert canonical(b"[1e16, 1e-5, -0.0, 1E400]") == b"[1e+16,1e-05,-0.0,Infinity]"
    assert canonical(b'{"b": 1.5, "a": 10000000000000000.0}') == b'{"a":1e+16,"b":1.5}'
