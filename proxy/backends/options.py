"""The options a store type's spec takes beside `type` and `path`, declared once in the registry.

A server store names its server (`dsn`, `url`, `target`) and its timeouts; the legacy file names its
journal's `flush_interval`. Config validation reads each declared option with its kind, fills in the
defaults and then runs the type's own check, so a backend reads `spec.options[...]` already valid.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any


class OptionKind(Enum):
    TEXT = "a string"
    PATH = "a non-empty path string"
    SECONDS = "a positive number of seconds"
    COUNT = "a whole number of at least 1"
    FLAG = "true or false"


@dataclass(frozen=True, slots=True)
class Option:
    """One option of a store type; `required` options have no default."""

    name: str
    kind: OptionKind
    default: Any = None
    required: bool = False
    #: True when the value may hold a password: it is masked wherever a spec is shown.
    secret: bool = False


#: Checks the options as a whole once each is valid on its own; raises ValueError("field: why").
OptionsCheck = Callable[[Mapping[str, Any]], None]


def read_options(declared: tuple[Option, ...], raw: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """The declared options of one spec, defaults filled in; ValueError("field: why") for a bad one.

    Unknown fields are the caller's to refuse (it knows `type` and `path` too). A relative PATH is
    taken relative to `base`, the config file's folder.
    """
    values: dict[str, Any] = {}
    for option in declared:
        if option.name not in raw or raw[option.name] is None:
            if option.required:
                raise ValueError(f"{option.name}: required")
            values[option.name] = option.default
            continue
        values[option.name] = _read(option, raw[option.name], base)
    return values


def _read(option: Option, value: object, base: Path) -> Any:
    wrong = ValueError(f"{option.name}: must be {option.kind.value}, got {value!r}")
    if option.kind is OptionKind.TEXT:
        if not isinstance(value, str) or (option.required and not value):
            raise wrong
        return value
    if option.kind is OptionKind.PATH:
        if not isinstance(value, str) or not value:
            raise wrong
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(os.path.abspath(base / path))
    if option.kind is OptionKind.FLAG:
        if not isinstance(value, bool):
            raise wrong
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong
    if option.kind is OptionKind.COUNT:
        if not isinstance(value, int) or value < 1:
            raise wrong
        return value
    if not 0 < value < math.inf:
        raise wrong
    return float(value)
