"""Format compatibility: what the new store (and the wire contract) cannot hold, listed before migrating.

The legacy JSON is read as it is on disk, so problems that a parser would hide are found: duplicate
member names (a parser keeps the last one silently), NaN and Infinity (Python writes them, JSON
has no such numbers), keys over 1024 UTF-8 bytes, keys that are not valid Unicode, documents over
max_value_bytes, documents nested deeper than Set accepts (proxy/jsonvalue.py holds the rules Set and
validate share), and bytes that are not UTF-8.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from proxy.backends.base import Backend
from proxy.backends.jsondir import SUFFIX, decode_name
from proxy.backends.jsonjournal import read_file_and_journal
from proxy.backends.registry import LegacyLayout, store_type
from proxy.config import MAX_KEY_BYTES, BackendSpec
from proxy.jsonvalue import TOO_DEEP, TOO_DEEP_DETAIL, too_deep, value_problem

SAMPLES = 20


@dataclass
class ValidateResult:
    checked: int = 0
    by_problem: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, str]] = field(default_factory=list)
    #: The type of the store the documents are meant for, when it holds less than the proxy accepts
    #: (a postgres target: no NUL in keys or strings, numbers within numeric's range).
    target: str | None = None

    @property
    def ok(self) -> bool:
        return not self.by_problem

    def problem(self, kind: str, key: str, detail: str = "") -> None:
        self.by_problem[kind] += 1
        if len(self.samples) < SAMPLES:
            self.samples.append({"problem": kind, "key": key, "detail": detail})

    def to_document(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "by_problem": dict(self.by_problem), "samples": self.samples}


def _check_member(result: ValidateResult, key: str, value: Any, max_value_bytes: int) -> None:
    result.checked += 1
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        result.problem("key_not_unicode", key.encode("utf-8", "backslashreplace").decode(),
                       "the key holds a lone surrogate escape")
        return
    if size > MAX_KEY_BYTES:
        result.problem("key_too_long", key[:80], f"{size} bytes, at most {MAX_KEY_BYTES}")
    # The rules Set applies (proxy/jsonvalue.py), walked without recursion: depth, duplicate members
    # (seen by _pairs), lone surrogates, numbers out of range.
    problem = value_problem(value)
    if problem is not None:
        result.problem(problem.kind, key, problem.detail)
        return
    encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(encoded) > max_value_bytes:
        result.problem("value_too_large", key, f"{len(encoded)} bytes, at most {max_value_bytes}")
    if result.target == "postgres":
        from proxy.backends.postgresdocs import refusal_kind

        refused = refusal_kind(key, encoded)
        if refused is not None:
            result.problem(refused[0], key.replace("\x00", "\\x00"), refused[1])


class _Object(dict[str, Any]):
    """A parsed JSON object that remembers the member names it had more than once."""

    duplicates: list[str]


def _pairs(items: list[tuple[str, Any]]) -> _Object:
    obj = _Object(items)
    obj.duplicates = [name for name, n in Counter(name for name, _ in items).items() if n > 1]
    return obj


#: What _parse_document returns for bytes that are not one JSON document (None is the document `null`).
_NOT_JSON: Final = object()


def _parse_document(raw: bytes, result: ValidateResult, where: str, one_value: bool = True) -> Any:
    """Parse keeping duplicate member names visible (see _pairs); _NOT_JSON, recorded as a problem,
    when the bytes are not one JSON document or (one_value) nest deeper than Set accepts.

    A legacy file (not one_value) is one level deeper than the documents it holds: its members are
    measured once parsed, and only a file past what Python's parser takes at all is a finding here."""

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        result.problem("invalid_utf8", where, f"{exc.reason} at byte {exc.start}")
        text = raw.decode("utf-8", errors="replace")
    if one_value and too_deep(raw):
        result.problem(TOO_DEEP, where, TOO_DEEP_DETAIL)
        return _NOT_JSON
    try:
        return json.loads(text, object_pairs_hook=_pairs)
    except RecursionError:
        result.problem(TOO_DEEP, where, f"{TOO_DEEP_DETAIL}, past what a JSON parser in Python reads")
        return _NOT_JSON
    except ValueError as exc:
        result.problem("not_json", where, str(exc))
        return _NOT_JSON


def validate_jsonfile(path: Path, max_value_bytes: int, target: str | None = None) -> ValidateResult:
    result = ValidateResult(target=target)
    # With flush_interval set the file may lag its journal: the writes it lacks are read too.
    raw, journaled = read_file_and_journal(path)
    document = _parse_document(raw, result, str(path), one_value=False)
    if document is _NOT_JSON:
        return result
    if not isinstance(document, dict):
        result.problem("not_an_object", str(path), "the legacy file must be one JSON object")
        return result
    for entry in journaled:
        if entry.value is None:
            document.pop(entry.key, None)
        elif (value := _parse_document(entry.value, result, entry.key)) is not _NOT_JSON:
            document[entry.key] = value
    for name in document.duplicates if isinstance(document, _Object) else []:
        result.problem("duplicate_member", name, "the key appears more than once in the file; a JSON parser "
                                                 "keeps only the last")
    for key, value in document.items():
        _check_member(result, key, value, max_value_bytes)
    return result


def validate_jsondir(folder: Path, max_value_bytes: int, target: str | None = None) -> ValidateResult:
    result = ValidateResult(target=target)
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(SUFFIX):
            continue
        stem = path.name[: -len(SUFFIX)]
        key = (folder / (stem + ".key")).read_text("utf-8") if stem.startswith("~") else decode_name(stem)
        document = _parse_document(path.read_bytes(), result, key)
        if document is _NOT_JSON:
            continue
        _check_member(result, key, document, max_value_bytes)
    return result


async def validate_backend(backend: Backend, max_value_bytes: int, target: str | None = None) -> ValidateResult:
    """Any other store: what a scan shows (its own parser has already hidden duplicates)."""
    result = ValidateResult(target=target)
    async for page in backend.scan():
        for key, raw in page:
            document = _parse_document(raw, result, key)
            if document is not _NOT_JSON:
                _check_member(result, key, document, max_value_bytes)
    return result


#: How the files of each legacy layout are read as written; any other store is validated through a scan.
_AS_WRITTEN: Mapping[LegacyLayout, Callable[[Path, int, str | None], ValidateResult]] = {
    LegacyLayout.OBJECT_FILE: validate_jsonfile,
    LegacyLayout.FILE_PER_KEY: validate_jsondir,
}


def reads_files(spec: BackendSpec) -> bool:
    """True when validate reads the store's files as written, so it needs no open store (and no lock)."""
    return spec.path is not None and store_type(spec.type).layout is not None


async def validate(spec: BackendSpec, backend: Backend | None, max_value_bytes: int,
                   target: str | None = None) -> ValidateResult:
    """What the store of spec holds that Set (or, given target, a store of that type) would refuse."""
    layout = store_type(spec.type).layout
    if layout is not None and spec.path is not None:
        return _AS_WRITTEN[layout](spec.path, max_value_bytes, target)
    if backend is None:
        raise ValueError(f"validating a {spec.type} store needs it open")
    return await validate_backend(backend, max_value_bytes, target)
