"""The shadow comparator compares as JSON, not as bytes, and names each kind of difference."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from proxy.data.compare import (
    Kind,
    compare_key_sets,
    compare_presence,
    compare_values,
    documents_equal,
    documents_equal_stdlib,
)

documents = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4),
    max_leaves=12,
)


def test_key_order_and_whitespace_are_not_differences() -> None:
    """{"a":1,"b":2} and { "b": 2, "a": 1 } are the same document."""
    assert documents_equal(b'{"a":1,"b":2}', b'{ "b": 2,\n "a": 1 }')
    assert compare_values(b'{"a":1,"b":[1,2]}', b'{"b":[1, 2],"a":1}') is None


def test_numbers_compare_as_json_numbers_but_booleans_are_not_numbers() -> None:
    """1 equals 1.0, but true is not 1 and false is not 0."""
    assert documents_equal(b"1", b"1.0")
    assert documents_equal(b"[1e2]", b"[100]")
    assert not documents_equal(b"true", b"1")
    assert not documents_equal(b'{"x": false}', b'{"x": 0}')
    assert not documents_equal(b"null", b"0")
    assert not documents_equal(b"[1, 2]", b"[2, 1]")


def test_kinds_of_get_difference() -> None:
    """Absent in the shadow, present only in the shadow, and a different value are told apart."""
    assert compare_values(b"1", None) == Kind.MISSING_IN_SHADOW
    assert compare_values(None, b"1") == Kind.EXTRA_IN_SHADOW
    assert compare_values(b"1", b"2") == Kind.VALUE_MISMATCH
    assert compare_values(None, None) is None
    assert compare_values(b"null", None) == Kind.MISSING_IN_SHADOW


def test_presence_differences() -> None:
    """Has and Delete compare presence."""
    assert compare_presence(True, False) == Kind.MISSING_IN_SHADOW
    assert compare_presence(False, True) == Kind.EXTRA_IN_SHADOW
    assert compare_presence(True, True) is None


def test_key_sets_give_counts_and_bounded_samples() -> None:
    """Keys are compared as sets: counts of each side's surplus and at most `sample` names."""
    diff = compare_key_sets([f"k{i}" for i in range(100)], [f"k{i}" for i in range(50, 120)], sample=5)
    assert (diff.missing, diff.extra) == (50, 20)
    assert diff.missing_sample == ("k0", "k1", "k10", "k11", "k12")
    assert len(diff.extra_sample) == 5
    assert diff.kind == Kind.MISSING_IN_SHADOW
    assert compare_key_sets(["a", "b"], ["b", "a"]).kind is None


@given(documents)
def test_a_document_equals_any_reserialization_of_itself(doc: Any) -> None:
    """Serializing one document two ways never counts as a difference."""
    compact = json.dumps(doc, separators=(",", ":")).encode()
    pretty = json.dumps(doc, indent=3, sort_keys=True).encode()
    assert documents_equal(compact, pretty)


@given(documents, documents)
def test_equality_agrees_with_a_type_aware_reference(a: Any, b: Any) -> None:
    """documents_equal is symmetric and matches a comparison that keeps booleans apart from numbers."""

    def tag(x: Any) -> Any:
        if isinstance(x, bool):
            return ("bool", x)
        if isinstance(x, int | float):
            return ("num", float(x))
        if isinstance(x, list):
            return ("list", [tag(i) for i in x])
        if isinstance(x, dict):
            return ("dict", sorted((k, tag(v)) for k, v in x.items()))
        return (type(x).__name__, x)

    left, right = json.dumps(a).encode(), json.dumps(b).encode()
    assert documents_equal(left, right) == documents_equal(right, left) == (tag(a) == tag(b))


@given(st.integers(-(2**53), 2**53), documents)
def test_an_integer_equals_its_float_spelling_anywhere_in_a_document(n: int, doc: Any) -> None:
    """1 and 1.0 (and 1e0) are one JSON number, at the top level or nested."""
    assert documents_equal(str(n).encode(), repr(float(n)).encode())
    assert documents_equal(json.dumps([doc, {"n": n}]).encode(), json.dumps([doc, {"n": float(n)}]).encode())
    assert not documents_equal(str(n).encode(), str(n + 1).encode())


@given(st.sets(st.text(max_size=3)), st.sets(st.text(max_size=3)), st.integers(0, 5))
def test_key_sets_count_each_sides_surplus_with_bounded_samples(primary: set[str], shadow: set[str],
                                                                sample: int) -> None:
    """Counts are the set differences, whatever the order or repetition; samples hold at most `sample` of them."""
    diff = compare_key_sets(sorted(primary, reverse=True) * 2, sorted(shadow), sample)
    assert (diff.missing, diff.extra) == (len(primary - shadow), len(shadow - primary))
    assert set(diff.missing_sample) <= primary - shadow
    assert set(diff.extra_sample) <= shadow - primary
    assert len(diff.missing_sample) == min(sample, diff.missing)
    assert len(diff.extra_sample) == min(sample, diff.extra)
    assert (diff.kind is None) == (primary == shadow)


def test_integers_past_64_bits_compare_exactly() -> None:
    """Two integers too long for a double differ by their last digit, as Python's own parser reads them."""
    assert not documents_equal(b"[18446744073709551617]", b"[18446744073709551616]")
    assert documents_equal(b'{"n": 123456789012345678901234567890}', b'{ "n":123456789012345678901234567890}')


def test_documents_the_fast_parser_refuses_compare_as_the_standard_library_reads_them() -> None:
    """What a legacy store may hold from before the rules (a lone surrogate, 1e400, NaN) still compares."""
    assert documents_equal(b'["\\ud800"]', b'[ "\\ud800"]')
    assert not documents_equal(b'["\\ud800"]', b'["\\ud801"]')
    assert documents_equal(b"[1e400]", b"[1e401]")  # both read as Infinity
    assert not documents_equal(b"[NaN]", b"[ NaN]")  # NaN equals nothing, itself included
    assert not documents_equal(b"[1, 2", b"[1,2")


@given(documents, documents)
def test_equality_agrees_with_the_standard_librarys_reading(a: Any, b: Any) -> None:
    """The fast parse and its sorted copy give the verdict the standard library's parse and walk give."""
    for left, right in ((a, b), (a, a), (b, json.loads(json.dumps(b, indent=1)))):
        raw_left, raw_right = json.dumps(left).encode(), json.dumps(right, sort_keys=True, indent=2).encode()
        assert documents_equal(raw_left, raw_right) == documents_equal_stdlib(raw_left, raw_right)
