"""The flag file (contract §3): parsed and validated whole into one frozen Flags value.

Every field is optional and the defaults send everything to `old` with nothing compared. Unknown
fields, wrong types, out-of-range numbers, duplicate fields and regexes that do not compile make the
whole file invalid, with a message naming the file, the line and the field.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from proxy.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Flags:
    revision: str = ""
    use_new_storage: bool = False
    shadow_mode_enabled: bool = False
    read_percentage: float = 0.0
    write_percentage: float = 0.0
    enabled_for_keys: tuple[str, ...] = ()
    disabled_for_keys: tuple[str, ...] = ()
    enabled_for_users: tuple[str, ...] = ()
    read_only: bool = False
    bucket_salt: str = ""

    def to_document(self) -> dict[str, Any]:
        """The flags in the file's own shape, as `turnout status` shows them."""
        doc = asdict(self)
        doc["traffic_percentage"] = {"read": doc.pop("read_percentage"), "write": doc.pop("write_percentage")}
        for name in ("enabled_for_keys", "disabled_for_keys", "enabled_for_users"):
            doc[name] = list(doc[name])
        return doc


@dataclass(frozen=True, slots=True)
class LoadedFlags:
    flags: Flags
    digest: str  # sha256 of the file's bytes: tells a real change from a touch


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


def load_flags(path: Path) -> LoadedFlags:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read flag file: {exc.strerror or exc}") from exc
    return LoadedFlags(parse_flags(raw, str(path)), hashlib.sha256(raw).hexdigest())


def parse_flags(raw: bytes | str, source: str = "flags.yaml") -> Flags:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
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


def _parse(node: yaml.Node | None) -> Flags:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
        return Flags()  # an empty file: the defaults
    fields = _mapping(node, "flags")
    for name, (key_node, _) in fields.items():
        if name not in _FIELDS:
            raise _Invalid(key_node, name, "unknown field")
    values: dict[str, Any] = {}
    if "revision" in fields:
        # Any scalar, as written: `revision: 2026-11-23` is a revision, not a date.
        revision = fields["revision"][1]
        if not isinstance(revision, yaml.ScalarNode):
            raise _Invalid(revision, "revision", f"must be a string, got {_kind(revision)}")
        values["revision"] = revision.value
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
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _mapping(node: yaml.Node, field: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise _Invalid(node, field, f"must be a mapping, got {_kind(node)}")
    result: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = _construct(key_node)
        if not isinstance(key, str):
            raise _Invalid(key_node, field, f"field names must be strings, got {key!r}")
        name = key if field == "flags" else f"{field}.{key}"
        if key in result:
            raise _Invalid(key_node, name, "appears twice")
        result[key] = (key_node, value_node)
    return result


def _sequence(node: yaml.Node, field: str) -> list[yaml.Node]:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return []
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(node, field, f"must be a list, got {_kind(node)}")
    return list(node.value)


def _scalar(node: yaml.Node, field: str, kind: type, described: str) -> Any:
    value = _construct(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(node, yaml.ScalarNode) or type(value) is not kind:
        raise _Invalid(node, field, f"must be {described}, got {_kind(node)}")
    return value


def _percentage(node: yaml.Node, field: str) -> float:
    value = _construct(node) if isinstance(node, yaml.ScalarNode) else None
    # bool is an int in Python, but `true` is no percentage.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise _Invalid(node, field, f"must be a number from 0 to 100, got {_kind(node)}")
    return float(value)


def _regex(node: yaml.Node, field: str) -> str:
    pattern: str = _scalar(node, field, str, "a regular expression string")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _Invalid(node, field, f"regular expression does not compile: {exc}") from None
    return pattern


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        value = _construct(node)
        return "null" if value is None else f"{type(value).__name__} {value!r}"
    return "a mapping" if isinstance(node, yaml.MappingNode) else "a list"

