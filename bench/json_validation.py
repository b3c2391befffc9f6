"""JSON validation and shadow comparison: the standard library against orjson and msgspec, in one run.

    .venv/bin/python bench/json_validation.py [--rounds 5] [--seconds 0.2] [--json OUT]

Validation is what Set does to every value (proxy/jsonvalue.py): `stdlib` is check_exactly, the
standard library's parser with the rules around it; `orjson` is check_document as the proxy runs it
(orjson's parse, the duplicate-member count, check_exactly only for what orjson refuses);
`msgspec` is the same fast path with msgspec's parser, measured here only. `parse only` rows are
each parser alone, the floor under any check built on it.

Comparison is what a Get in shadow mode does when the two stores' bytes differ (proxy/data/compare.py):
parse both sides and walk them as JSON values; each variant changes only the parser, except
`msgspec, sorted copy first`, which first compares both sides written out with sorted members and
walks only when those differ (a number written `1` and `1.0` is still equal).

Documents: the Set value bench/run.py sends (54 bytes), a 2 KB record with escapes and non-ASCII
text, and a 200 KB list of records. Every figure is the best of --rounds rounds, the variants
interleaved; ratios are to the standard library of the same document in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import SET_VALUE
from bench.report import Figure, add_round_options, best_of_rounds, print_table, save, with_ratio
from proxy.data.compare import documents_equal, json_equal
from proxy.jsonvalue import _SEPARATORS_AND_QUOTES, _outside_strings, check_document, check_exactly, too_deep


def record(n: int) -> dict[str, Any]:
    return {
        "id": n, "name": f"Ada Lovelace {n}", "email": f"ada{n}@example.org", "active": n % 2 == 0,
        "score": n * 1.25, "city": "Zürich", "quote": 'she said "hi"\nand left\\', "url": f"https://x.org:8080/u/{n}",
        "tags": ["math", "engines", f"t{n % 7}"], "address": {"street": "1 Main St", "zip": f"{10000 + n}"},
        "history": [{"at": f"2024-01-{1 + n % 28:02}T12:30:00Z", "event": "login", "ok": True}],
    }


DOCUMENTS: dict[str, bytes] = {
    "small": SET_VALUE,
    "2 KB": json.dumps({"user": record(1), "friends": [record(i) for i in range(2, 6)]}).encode(),
    "200 KB": json.dumps([record(i) for i in range(500)], ensure_ascii=False).encode(),
}

_msgspec_decode = msgspec.json.Decoder().decode
_msgspec_encode = msgspec.json.Encoder().encode
_msgspec_sorted = msgspec.json.Encoder(order="sorted").encode


def _separators(text: bytes) -> int:
    return _outside_strings(text, _SEPARATORS_AND_QUOTES).count(b":")


def check_with_msgspec(raw: bytes) -> None:
    """check_document's fast path with msgspec's parser in orjson's place (refuses the same, keeps big ints)."""
    if not too_deep(raw):
        try:
            parsed = _msgspec_decode(raw)
        except (msgspec.DecodeError, RecursionError):
            pass
        else:
            written = raw.count(b":")
            if not written or (written == (kept := _msgspec_encode(parsed)).count(b":")
                               and (b"\\" not in raw or b"\\u003" not in raw)):
                return
            if _separators(raw) == _separators(kept):
                return
    check_exactly(raw)


def equal_with(loads: Callable[[bytes], Any]) -> Callable[[bytes, bytes], bool]:
    def equal(a: bytes, b: bytes) -> bool:
        return a == b or json_equal(loads(a), loads(b))
    return equal


def equal_sorted_first(a: bytes, b: bytes) -> bool:
    if a == b:
        return True
    left, right = _msgspec_decode(a), _msgspec_decode(b)
    return _msgspec_sorted(left) == _msgspec_sorted(right) or json_equal(left, right)


VALIDATORS: dict[str, Callable[[bytes], object]] = {
    "stdlib": check_exactly,
    "orjson": check_document,
    "msgspec": check_with_msgspec,
    "stdlib parse only": lambda raw: json.loads(raw.decode()),
    "orjson parse only": orjson.loads,
    "msgspec parse only": _msgspec_decode,
}
COMPARERS: dict[str, Callable[[bytes, bytes], bool]] = {
    "stdlib": equal_with(json.loads),
    "orjson": equal_with(orjson.loads),
    "msgspec": equal_with(_msgspec_decode),
    "msgspec, sorted copy first": equal_sorted_first,
    "proxy (compare.documents_equal)": documents_equal,
}


def relaid(raw: bytes) -> bytes:
    """The same document in another layout: members in reverse order, indented, so the bytes differ."""
    def reverse(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reverse(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [reverse(v) for v in value]
        return value
    return json.dumps(reverse(json.loads(raw)), indent=1).encode()


def calls_per_second(work: Callable[[], object], seconds: float) -> float:
    """Calls per second of work over about `seconds`, in batches so that the clock is read rarely."""
    batch = 1
    while True:
        started = time.perf_counter()
        for _ in range(batch):
            work()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return batch / elapsed
        batch *= 2 if elapsed < seconds / 4 else 1 + max(1, round(seconds / max(elapsed, 1e-9)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.2, help="measured time per variant and round")
    add_round_options(parser)
    args = parser.parse_args()

    works: dict[tuple[str, str, str], Callable[[], object]] = {}
    for doc, raw in DOCUMENTS.items():
        other = relaid(raw)
        for name, validate in VALIDATORS.items():
            validate(raw)  # each must take every document here
            works["validate", doc, name] = lambda validate=validate, raw=raw: validate(raw)  # type: ignore[misc]
        for name, equal in COMPARERS.items():
            if not equal(raw, other):
                raise RuntimeError(f"{name} finds two layouts of the {doc} document different")
            works["compare", doc, name] = lambda equal=equal, raw=raw, other=other: equal(raw, other)  # type: ignore[misc]
    cases = list(works)
    done = 0

    def measure(case: tuple[str, str, str]) -> float:
        nonlocal done
        done += 1
        if sys.stderr.isatty():
            print(f"\r{done}/{len(cases) * args.rounds} measurements", end="", file=sys.stderr, flush=True)
        return calls_per_second(works[case], args.seconds)

    best = best_of_rounds(args.rounds, cases, measure)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    figures: list[Figure] = []
    baselines: dict[tuple[str, str], Figure] = {}
    for what, doc, name in cases:  # each document's stdlib variant comes first
        rate = best[what, doc, name]
        figure = Figure(f"{what} {doc} ({len(DOCUMENTS[doc])} B): {name}", rate, "calls/s",
                        extra={"us_per_call": 1e6 / rate})
        if name == "stdlib":
            baselines[what, doc] = figure
            figures.append(figure)
        else:
            figures.append(with_ratio(figure, baselines[what, doc]))
    print_table("JSON validation and comparison, calls/s (ratio: times the standard library's rate)", figures)
    for figure in figures:
        print(f"  {figure.case}: {figure.extra['us_per_call']:.2f} us per call")
    save(args.json, "json_validation", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
