"""The flag file (contract §3): parsed and validated whole into one frozen Flags value.

Every field is optional and the defaults send everything to `old` with nothing compared. Unknown
fields, wrong types, out-of-range numbers, duplicate fields and regexes that do not compile make the
whole file invalid, with a message naming the file, the line and the field
(`flags.yaml:7: traffic_percentage.read: must be a number from 0 to 100, got 150`).

Scalars are read the way YAML 1.2 (and so every editor with the JSON Schema) reads them: only
`true`/`false` are booleans, so `use_new_storage: no` is refused as a string instead of quietly
turning the kill switch off, and `revision: 2026-11-23` stays the string it looks like.

The key regexes are compiled here, once per file, into one matcher per list; the router only calls it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from proxy.errors import ConfigError

#: Says whether a key matches any regex of one list (re.search semantics); truthy when it does.
KeySearch = Callable[[str], object]


@dataclass(frozen=True, slots=True)
class Flags:
    revision: str = ""
    use_new_storage: bool = False
    shadow_mode_enabled: bool = False
    read_percentage: float = 0.0  # traffic_percentage.read in the file
    write_percentage: float = 0.0  # traffic_percentage.write in the file
    enabled_for_keys: tuple[str, ...] = ()
    disabled_for_keys: tuple[str, ...] = ()
    enabled_for_users: tuple[str, ...] = ()
    read_only: bool = False
    bucket_salt: str = ""
    # Compiled from the pattern strings above when the value is made; None for an empty list.
    enabled_keys_search: KeySearch | None = field(init=False, repr=False, compare=False)
    disabled_keys_search: KeySearch | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Flags built in code (tests, tools) get the same range checks as a parsed file.
        for name, value in (("traffic_percentage.read", self.read_percentage),
                            ("traffic_percentage.write", self.write_percentage)):
            if not _is_percentage(value):
                raise ConfigError(f"{name}: must be a number from 0 to 100, got {value!r}")
        object.__setattr__(self, "enabled_keys_search", compile_key_patterns(self.enabled_for_keys, "enabled_for_keys"))
        object.__setattr__(
            self, "disabled_keys_search", compile_key_patterns(self.disabled_for_keys, "disabled_for_keys")
        )

    def to_document(self) -> dict[str, Any]:
        """The flags in the file's own shape, as `turnout status` and `check-flags --json` show them."""
        return {
            "revision": self.revision,
            "use_new_storage": self.use_new_storage,
            "shadow_mode_enabled": self.shadow_mode_enabled,
            "traffic_percentage": {"read": self.read_percentage, "write": self.write_percentage},
            "enabled_for_keys": list(self.enabled_for_keys),
            "disabled_for_keys": list(self.disabled_for_keys),
            "enabled_for_users": list(self.enabled_for_users),
            "read_only": self.read_only,
            "bucket_salt": self.bucket_salt,
        }


@dataclass(frozen=True, slots=True)
class LoadedFlags:
    flags: Flags
    digest: str  # sha256 of the file's bytes: tells a real change from a touch


def compile_key_patterns(patterns: tuple[str, ...], name: str) -> KeySearch | None:
    """One search function for a list of regexes: a single combined regex when that keeps each
    pattern's meaning, else the patterns tried in turn."""
    if not patterns:
        return None
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"{name}[{i}]: regular expression does not compile: {exc}") from None
    if len(compiled) == 1:
        return compiled[0].search
    # Numbered groups would be renumbered inside an alternation (a \1 would point elsewhere), and a
    # global inline flag such as (?i) may only open a whole pattern: keep those apart.
    if all(p.groups == 0 for p in compiled):
        try:
            return re.compile("|".join(f"(?:{p})" for p in patterns)).search
        except re.error:
            pass
    searches = tuple(p.search for p in compiled)
    return lambda key: any(search(key) for search in searches)


def load_flags(path: Path) -> LoadedFlags:
    """Read and validate the flag file at path; ConfigError names the file, line and field."""
    return parse_loaded(read_flag_file(path), str(path))


def read_flag_file(path: Path) -> bytes:
    """The flag file's bytes; ConfigError when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read flag file: {exc.strerror or exc}") from exc


def parse_loaded(raw: bytes, source: str) -> LoadedFlags:
    """parse_flags for bytes already read, with their digest."""
    return LoadedFlags(parse_flags(raw, source), digest(raw))


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def parse_flags(raw: bytes | str, source: str = "flags.yaml") -> Flags:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        node = yaml.compose(text, Loader=FlagsLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    try:
        return _parse(node)
    except _Invalid as exc:
        line = f":{exc.node.start_mark.line + 1}" if exc.node is not None else ""
        raise ConfigError(f"{source}{line}: {exc.field}: {exc.message}") from None


def read_document(text: str) -> Any:
    """The file as plain data, its scalars read exactly as parse_flags reads them (for schema checks)."""
    return yaml.load(text, Loader=FlagsLoader)  # FlagsLoader is a SafeLoader


# -- YAML 1.2 scalars -----------------------------------------------------------------------------

_BOOL = "tag:yaml.org,2002:bool"
_FLOAT = "tag:yaml.org,2002:float"
_INT = "tag:yaml.org,2002:int"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"

_INT_12 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_12 = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class FlagsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema's scalars, as editors read the file: booleans
    are true/false only, no dates, integers are decimal, 0o octal or 0x hex (`010` is ten, `1_000` and
    `1:30` are strings), and `1e2` is a number."""

    def construct_yaml_int(self, node: yaml.Node) -> int:
        text = str(self.construct_scalar(node))  # type: ignore[arg-type]
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)

    def construct_yaml_float(self, node: yaml.Node) -> float:
        text = str(self.construct_scalar(node)).lower()  # type: ignore[arg-type]
        if text.endswith(".inf"):
            return -math.inf if text.startswith("-") else math.inf
        return math.nan if text == ".nan" else float(text)


FlagsLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _TIMESTAMP, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
FlagsLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
FlagsLoader.add_implicit_resolver(_INT, _INT_12, list("-+0123456789"))  # before float: `10` is an int
FlagsLoader.add_implicit_resolver(_FLOAT, _FLOAT_12, list("-+.0123456789"))
FlagsLoader.add_constructor(_INT, FlagsLoader.construct_yaml_int)
FlagsLoader.add_constructor(_FLOAT, FlagsLoader.construct_yaml_float)


# -- validation, node by node so every error has a line ---------------------------------------------

_FIELDS = {
    "revision", "use_new_storage", "shadow_mode_enabled", "traffic_percentage", "enabled_for_keys",
    "disabled_for_keys", "enabled_for_users", "read_only", "bucket_salt",
}
_PERCENTAGES = {"read", "write"}


class _Invalid(Exception):
    def __init__(self, node: yaml.Node | None, field: str, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.field = field
        self.message = message


def _parse(node: yaml.Node | None) -> Flags:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
        return Flags()  # an empty file: the defaults
    fields = _mapping(node, "flags")
    for name, (key_node, _) in fields.items():
        if name not in _FIELDS:
            raise _Invalid(key_node, name, "unknown field")
    values: dict[str, Any] = {}
    if "revision" in fields:
        values["revision"] = _revision(fields["revision"][1])
    if "bucket_salt" in fields:
        values["bucket_salt"] = _scalar(fields["bucket_salt"][1], "bucket_salt", str, "a string")
    for name in ("use_new_storage", "shadow_mode_enabled", "read_only"):
        if name in fields:
            values[name] = _scalar(fields[name][1], name, bool, "true or false")
    if "traffic_percentage" in fields:
        shares = _mapping(fields["traffic_percentage"][1], "traffic_percentage")
        for share, (key_node, value_node) in shares.items():
            if share not in _PERCENTAGES:
                raise _Invalid(key_node, f"traffic_percentage.{share}", "unknown field (read or write)")
            values[f"{share}_percentage"] = _percentage(value_node, f"traffic_percentage.{share}")
    for name in ("enabled_for_keys", "disabled_for_keys"):
        if name in fields:
            items = _sequence(fields[name][1], name)
            values[name] = tuple(_regex(item, f"{name}[{i}]") for i, item in enumerate(items))
    if "enabled_for_users" in fields:
        items = _sequence(fields["enabled_for_users"][1], "enabled_for_users")
        values["enabled_for_users"] = tuple(
            _scalar(item, f"enabled_for_users[{i}]", str, "a string") for i, item in enumerate(items)
        )
    return Flags(**values)


def _construct(node: yaml.Node) -> Any:
    return FlagsLoader("").construct_object(node, deep=True)


def _mapping(node: yaml.Node, field: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise _Invalid(node, field, f"must be a mapping, got {_shown(node)}")
    result: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = _construct(key_node) if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str):
            raise _Invalid(key_node, field, f"field names must be strings, got {_shown(key_node)}")
        name = key if field == "flags" else f"{field}.{key}"
        if key in result:
            raise _Invalid(key_node, name, "appears twice")
        result[key] = (key_node, value_node)
    return result


def _sequence(node: yaml.Node, field: str) -> list[yaml.Node]:
    if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
        return []  # `enabled_for_keys:` with nothing after it: an empty list
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(node, field, f"must be a list, got {_shown(node)}")
    return list(node.value)


def _scalar(node: yaml.Node, field: str, kind: type, described: str) -> Any:
    value = _construct(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(node, yaml.ScalarNode) or type(value) is not kind:
        raise _Invalid(node, field, f"must be {described}, got {_shown(node)}")
    return value


def _revision(node: yaml.Node) -> str:
    # A string, or a number kept as written: `revision: 2026.10` is "2026.10", not 2026.1.
    value = _construct(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(node, yaml.ScalarNode) or isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Invalid(node, "revision", f"must be a string, got {_shown(node)}")
    return str(node.value)


def _is_percentage(value: object) -> TypeGuard[int | float]:
    # bool is an int in Python, but `true` is no percentage; NaN compares false both ways, so say it.
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and not (isinstance(value, float) and math.isnan(value))
        and 0 <= value <= 100
    )


def _percentage(node: yaml.Node, field: str) -> float:
    value = _construct(node) if isinstance(node, yaml.ScalarNode) else None
    if not _is_percentage(value):
        raise _Invalid(node, field, f"must be a number from 0 to 100, got {_shown(node)}")
    return float(value)


def _regex(node: yaml.Node, field: str) -> str:
    pattern: str = _scalar(node, field, str, "a regular expression string")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _Invalid(node, field, f"regular expression does not compile: {exc}") from None
    return pattern


def _shown(node: yaml.Node) -> str:
    """A value as the operator wrote it: 150, true, null, 'yes please', a list, a mapping."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = _construct(node)
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    return str(node.value)
