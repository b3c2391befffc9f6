"""The rules of a stored value (proxy/jsonvalue.py), and the tools that read stored documents of any depth."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.backends.memory import MemoryBackend
from proxy.data.compare import documents_equal, json_equal
from proxy.jsonvalue import MAX_DEPTH, DocumentError, check_document, check_exactly, nesting_depth, value_problem
from proxy.migration import archive as archives
from proxy.migration.checksum import canonical, item_hash
from proxy.migration.validate import validate_jsondir, validate_jsonfile
from proxy.migration.verify import compare_stores

#: Past what Python's own json parser takes (about 1000 levels).
PAST_THE_PARSER = 5000

documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=20,
)


def reference_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(reference_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(reference_depth, value), default=0)
    return 0


@given(documents)
def test_nesting_depth_matches_the_parsed_document(value: Any) -> None:
    """The linear scan measures the nesting a parser sees, whatever brackets, quotes and backslashes the strings hold."""
    assert nesting_depth(json.dumps(value).encode()) == reference_depth(value)


@given(documents)
def test_every_round_tripping_document_is_accepted(value: Any) -> None:
    """A document that any store can hold (no duplicates, surrogates or overflow, shallow) passes the check."""
    check_document(json.dumps(value).encode())
    check_document(json.dumps(value, ensure_ascii=False, indent=1).encode())


def test_brackets_and_escapes_inside_strings_do_not_count_as_nesting() -> None:
    """Brackets inside strings, and escaped quotes and backslashes before them, leave the depth alone."""
    assert nesting_depth(b'["[[[[", "\\\\", "\\"[[", {"a": "]]]]"}]') == 2
    check_document(b'"' + b"[" * (MAX_DEPTH * 2) + b'"')


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "too_deep"),
        (b'{"a": {"b": 1, "b": 1}}', "duplicate_member"),
        (b'{"url": "http://x", "t": "12:30", "t": 1}', "duplicate_member"),
        (b'["\\uDBFF"]', "value_not_unicode"),
        (b'{"k": [1.5e309]}', "nan_or_infinity"),
        (b"1" + b"0" * 400 + b".0", "nan_or_infinity"),
        (b"[1, 2", "not_json"),
        (b'"\xc3"', "invalid_utf8"),
    ],
)
def test_check_document_names_the_problem(raw: bytes, kind: str) -> None:
    """Each kind of document that cannot round-trip is refused with its own kind."""
    with pytest.raises(DocumentError) as err:
        check_document(raw)
    assert err.value.problem.kind == kind


def alternating(depth: int) -> bytes:
    """Arrays and objects inside each other in turn, depth levels."""
    text = "1"
    for level in range(depth):
        text = f"[{text}]" if level % 2 else f'{{"a": {text}}}'
    return text.encode()


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 2 * MAX_DEPTH + 1])
def test_depth_limit_is_exact_for_arrays_and_objects_in_turn(depth: int) -> None:
    """Mixed nesting is refused from one level past the limit on, and accepted up to it."""
    assert nesting_depth(alternating(depth)) == depth
    if depth > MAX_DEPTH:
        with pytest.raises(DocumentError, match="deeper than"):
            check_document(alternating(depth))
    else:
        check_document(alternating(depth))


def test_colons_inside_strings_are_not_duplicates() -> None:
    """Colons in string values (URLs, times) do not make a document with distinct members look duplicated."""
    check_document(b'{"url": "http://a:80/b", "at": "12:30:00", "n": {"x": ":"}}')


def test_value_problem_walks_past_the_parsers_depth_without_recursion() -> None:
    """A parsed document thousands of levels deep is measured as too deep, not a RecursionError."""
    value: Any = 1
    for _ in range(PAST_THE_PARSER):
        value = [value]
    problem = value_problem(value)
    assert problem is not None
    assert problem.kind == "too_deep"


def test_comparison_and_checksum_take_a_document_of_any_depth() -> None:
    """Deep documents compare and hash without a RecursionError, even past what Python's parser reads."""
    deep = [json.loads(b"[" * 500 + b"1" + b"]" * 500)]
    assert json_equal(deep, json.loads(json.dumps(deep)))
    assert documents_equal(json.dumps(deep).encode(), json.dumps(deep, indent=1).encode())
    too_deep = b"[" * PAST_THE_PARSER + b"]" * PAST_THE_PARSER
    assert not documents_equal(too_deep, too_deep.replace(b"[]", b"[ ]"))
    assert canonical(too_deep) == too_deep
    item_hash("k", too_deep)
    assert not json_equal({"a": [1]}, {"a": 1})
    assert not json_equal([True], [1])


async def test_verify_and_archive_take_a_document_past_the_parser(tmp_path: Path) -> None:
    """A stored document nested past Python's parser is a difference verify names, and archives and checks whole."""
    too_deep = b"[" * PAST_THE_PARSER + b"]" * PAST_THE_PARSER
    old, new = MemoryBackend(), MemoryBackend()
    await old.set("deep", too_deep)
    await new.set("deep", too_deep.replace(b"[]", b"[ ]"))
    result = await compare_stores(old, new)
    assert result.samples["different"] == ["deep"]
    summary = await archives.archive(old, tmp_path / "old.tzst", "old:memory")
    assert archives.check(tmp_path / "old.tzst").checksum == summary.checksum


def test_validate_reports_too_deep_documents_by_key(tmp_path: Path) -> None:
    """A too-deep member of a legacy file, or file of a jsondir, is a finding under its key, not a crash."""
    deep = json.loads(b"[" * 400 + b"]" * 400)
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"deep": deep, "fine": [[1]]}))
    found = validate_jsonfile(legacy, 1 << 20)
    assert dict(found.by_problem) == {"too_deep": 1}
    assert found.samples[0]["key"] == "deep"
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "deep.json").write_text(json.dumps(deep))
    (folder / "past.json").write_bytes(b"[" * PAST_THE_PARSER + b"]" * PAST_THE_PARSER)
    assert dict(validate_jsondir(folder, 1 << 20).by_problem) == {"too_deep": 2}


def outcome(check: Callable[[bytes], None], raw: bytes) -> str | None:
    """The kind of problem check finds in raw, or None when it takes raw."""
    try:
        check(raw)
    except DocumentError as exc:
        return exc.problem.kind
    return None


#: Member names and scalars at the edges of the rules: colons inside strings and spelled by escapes,
#: surrogates alone and in pairs, numbers at a double's range and past 64 bits, what is not JSON.
NAMES = ["a", "b", "a:b", "\\u003a", "\\u003A:", "\\ud800", "\\udc00\\ud800", "\\ud83d\\ude00", '\\"', "\\\\", "é", ""]
SCALARS = ["1", "-0", "1.5", "1e308", "1.7976931348623157e308", "1.7976931348623158e308", "1.7976931348623159e308",
           "-1e400", "1e-400", "18446744073709551616", "1" + "0" * 400, "1" + "0" * 400 + ".0", "true", "null",
           '"x:y"', '"\\u003a"', '"\\udc00"', '"\\ud83d\\ude00"', "NaN", "Infinity", "01", "[1,]", '"\\x"']

edge_texts = st.recursive(
    st.sampled_from(SCALARS),
    lambda children: st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
    | st.lists(st.tuples(st.sampled_from(NAMES), children), max_size=4).map(
        lambda members: "{" + ", ".join(f'"{name}": {value}' for name, value in members) + "}"),
    max_leaves=12,
)


@given(edge_texts)
def test_the_fast_path_and_the_exact_check_agree_on_documents_at_the_edges(text: str) -> None:
    """orjson's fast path takes exactly what the standard library's check takes, and refuses the rest
    with the same finding (it hands every doubt to the exact check)."""
    raw = text.encode()
    assert outcome(check_document, raw) == outcome(check_exactly, raw)


@given(st.binary(max_size=40) | st.text(alphabet='{}[]":,\\u0123456789abcdefE.-+ tnrl', max_size=40).map(str.encode))
def test_the_fast_path_and_the_exact_check_agree_on_any_bytes(raw: bytes) -> None:
    """Garbage, truncated documents and stray escapes get the same verdict from both paths."""
    assert outcome(check_document, raw) == outcome(check_exactly, raw)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'{"a": 1, "a": "\\u003a"}', "duplicate_member"),  # the escape's colon makes up for the lost one
        (b'{"a": "\\u003a", "a": 1}', "duplicate_member"),
        (b'{"k": "\\"", "k": "\\\\"}', "duplicate_member"),
        (b"[1.7976931348623159e308]", "nan_or_infinity"),
        (b'["\\ude00\\ud83d"]', "value_not_unicode"),
        (b"[" * 1100 + b"]" * 1100, "too_deep"),
    ],
)
def test_the_fast_path_refuses_what_only_a_count_or_the_exact_check_catches(raw: bytes, kind: str) -> None:
    """Duplicates hidden by escapes, the first number past a double, reversed surrogates, orjson's own depth limit."""
    assert outcome(check_document, raw) == kind


@pytest.mark.parametrize(
    "raw",
    [b"1" + b"0" * 400, b'{"n": 18446744073709551616}', b"[1.7976931348623158e308]", b'{"a:b": "\\u003a", "b": 1}',
     b'["\\ud83d\\ude00"]', b'{"a": 1, "A": 1, "\\u0061b": 2}'],
)
def test_the_fast_path_takes_what_the_rules_take(raw: bytes) -> None:
    """A long integer (which orjson alone refuses and Python keeps whole), the largest double, escaped colons."""
    assert outcome(check_document, raw) is None


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'{"name": "someone", "visits": 12, "tags": ["a", "b"]}', None),
        (b'{"a": 1, "a": 2}', "duplicate_member"),
        (b'{"t": "12:30", "t": 1}', "duplicate_member"),  # a colon in a string stands in for the lost one
        (b'{"a": 1, "b": "x:y", "a": 2}', "duplicate_member"),
        (b'{"a": "{", "a": 1}', "duplicate_member"),
        (b'{"a": [1, {"b": 2, "b": 3}]}', "duplicate_member"),  # nested members: more colons than kept
        (b'{"a": {}, "b": []}', None),
        (b'{"url": "http://x", "n": 1}', None),
        (b'{"a": "\\u003a", "b": 1}', None),
    ],
)
def test_flat_objects_are_judged_by_their_colons_and_others_by_the_copy(raw: bytes, kind: str | None) -> None:
    """The short cut for an object with as many colon bytes as members kept takes only documents without
    a duplicate, whatever colons or braces their strings hold, and agrees with the exact check."""
    assert outcome(check_document, raw) == kind
    assert outcome(check_exactly, raw) == kind
