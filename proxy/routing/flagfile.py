"""Reading the flag file: its bytes (proxy.routing.flagbytes: a regular file of bounded size, nothing
else), the YAML and the validation, into a Flags value.

Unknown fields, wrong types, out-of-range numbers, duplicate fields and regexes that RE2 does not
compile make the whole file invalid, with a message naming the file, the line and the field
(`flags.yaml:7: traffic_percentage.read: must be a number from 0 to 100, got 150`). Validation goes
node by node over the composed YAML, so that every error has a line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from proxy.errors import ConfigError
from proxy.routing.comparisonrules import RULE_FIELDS, ComparisonRule, parse_expiry
from proxy.routing.flagbytes import read_flag_file
from proxy.routing.flags import Flags, LoadedFlags, check_key_pattern, is_percentage
from proxy.routing.safetyflags import CanaryPlan, Triggers, parse_duration
from proxy.routing.yaml12 import NULL_TAG, FlagsLoader


def load_flags(path: Path) -> LoadedFlags:
    """Read and validate the flag file at path; ConfigError names the file, line and field."""
    return parse_loaded(read_flag_file(path), str(path))


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


_FIELDS = {
    "revision", "use_new_storage", "shadow_mode_enabled", "traffic_percentage", "enabled_for_keys",
    "disabled_for_keys", "enabled_for_users", "read_only", "bucket_salt", "rollback_triggers", "canary",
    "comparison_rules",
}
_TRIGGER_SHARES = ("error_rate", "latency_increase", "discrepancy_rate")
_TRIGGER_FIELDS = {*_TRIGGER_SHARES, "window", "min_calls"}
_CANARY_FIELDS = {"steps", "interval"}
_PERCENTAGES = {"read", "write"}


class _Invalid(Exception):
    def __init__(self, node: yaml.Node | None, field: str, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.field = field
        self.message = message


def _parse(node: yaml.Node | None) -> Flags:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG):
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
    if "rollback_triggers" in fields:
        values["rollback_triggers"] = _triggers(fields["rollback_triggers"][1])
    if "canary" in fields:
        values["canary"] = _canary(fields["canary"][1])
    if "comparison_rules" in fields:
        items = _sequence(fields["comparison_rules"][1], "comparison_rules")
        values["comparison_rules"] = tuple(_comparison_rule(item, f"comparison_rules[{i}]")
                                           for i, item in enumerate(items))
    return Flags(**values)


def _comparison_rule(node: yaml.Node, name: str) -> ComparisonRule:
    fields = _mapping(node, name)
    for key, (key_node, _) in fields.items():
        if key not in RULE_FIELDS:
            raise _Invalid(key_node, f"{name}.{key}", f"unknown field (one of {', '.join(sorted(RULE_FIELDS))})")
    for required in ("keys", "owner", "expires"):
        if required not in fields:
            raise _Invalid(node, f"{name}.{required}", _REQUIRED[required])
    values: dict[str, Any] = {
        "keys": _regex(fields["keys"][1], f"{name}.keys"),
        "owner": _scalar(fields["owner"][1], f"{name}.owner", str, "a string naming a team or a person"),
    }
    expires_node = fields["expires"][1]
    if not isinstance(expires_node, yaml.ScalarNode):
        raise _Invalid(expires_node, f"{name}.expires",
                       f"must be a date such as 2026-12-31, got {_shown(expires_node)}")
    try:
        values["expires"] = parse_expiry(_construct(expires_node), f"{name}.expires")
    except ConfigError as exc:
        raise _Invalid(expires_node, *_split(exc)) from None
    if "reason" in fields:
        values["reason"] = _scalar(fields["reason"][1], f"{name}.reason", str, "a string")
    paths: list[yaml.Node] = []
    if "ignore_fields" in fields:
        paths = _sequence(fields["ignore_fields"][1], f"{name}.ignore_fields")
        values["ignore_fields"] = tuple(_scalar(item, f"{name}.ignore_fields[{i}]", str, "a path such as $.updated_at")
                                        for i, item in enumerate(paths))
    if "numeric_tolerance" in fields:
        tolerance_node = fields["numeric_tolerance"][1]
        value = _construct(tolerance_node) if isinstance(tolerance_node, yaml.ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(tolerance_node, f"{name}.numeric_tolerance",
                           f"must be a number, got {_shown(tolerance_node)}")
        values["numeric_tolerance"] = value  # ComparisonRule checks the range
    try:
        return ComparisonRule(**values)
    except ConfigError as exc:
        field, message = _split(exc)
        # The line of the value at fault: `ignore_fields[1]` -> that item, `numeric_tolerance` -> its value.
        at = next((item for i, item in enumerate(paths) if field == f"ignore_fields[{i}]"), None)
        named = fields.get(field.partition("[")[0])
        raise _Invalid(at or (node if named is None else named[1]), f"{name}.{field}", message) from None


_REQUIRED = {
    "keys": "is required: a regular expression (RE2) of the keys the rule is for, such as '^session:'",
    "owner": "is required: who answers for the rule (a team or a person), so that someone reviews it",
    "expires": "is required: the last day the rule applies, such as 2026-12-31; after it the rule stops applying",
}


def _triggers(node: yaml.Node) -> Triggers:
    fields = _mapping(node, "rollback_triggers")
    values: dict[str, Any] = {}
    for name, (key_node, value_node) in fields.items():
        field = f"rollback_triggers.{name}"
        if name not in _TRIGGER_FIELDS:
            raise _Invalid(key_node, field, f"unknown field (one of {', '.join(sorted(_TRIGGER_FIELDS))})")
        if name == "window":
            values["window_s"] = _duration(value_node, field)
        elif name == "min_calls":
            values["min_calls"] = _scalar(value_node, field, int, "a whole number")
        else:
            value = _construct(value_node) if isinstance(value_node, yaml.ScalarNode) else None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _Invalid(value_node, field, f"must be a number, got {_shown(value_node)}")
            values[name] = value  # Triggers checks the range, then makes it a float
    try:
        return Triggers(**values)
    except ConfigError as exc:
        field, message = _split(exc)
        # The line of the value at fault, not of the mapping: `rollback_triggers.min_calls` -> its node.
        named = fields.get(field.removeprefix("rollback_triggers."))
        raise _Invalid(node if named is None else named[1], field, message) from None


def _canary(node: yaml.Node) -> CanaryPlan:
    fields = _mapping(node, "canary")
    for name, (key_node, _) in fields.items():
        if name not in _CANARY_FIELDS:
            raise _Invalid(key_node, f"canary.{name}", "unknown field (steps or interval)")
    if "steps" not in fields:
        raise _Invalid(node, "canary.steps", "is required: the percentages to walk through, such as [1, 10, 50, 100]")
    steps = []
    items = _sequence(fields["steps"][1], "canary.steps")
    for i, item in enumerate(items):
        value = _construct(item) if isinstance(item, yaml.ScalarNode) else None
        if not is_percentage(value) or value == 0:
            raise _Invalid(item, f"canary.steps[{i}]",
                           f"must be a percentage above 0 and at most 100, got {_shown(item)}")
        steps.append(float(value))
    values: dict[str, Any] = {"steps": tuple(steps)}
    if "interval" in fields:
        values["interval_s"] = _duration(fields["interval"][1], "canary.interval")
    try:
        return CanaryPlan(**values)
    except ConfigError as exc:
        field, message = _split(exc)
        # `canary.steps[2]: must be above the step before it` is that item's line (a block list spans several).
        at = next((item for i, item in enumerate(items) if field == f"canary.steps[{i}]"), fields["steps"][1])
        raise _Invalid(at, field, message) from None


def _duration(node: yaml.Node, field: str) -> float:
    value = _construct(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(node, yaml.ScalarNode):
        raise _Invalid(node, field, f"must be a duration such as 60s, 10m or 1h, got {_shown(node)}")
    try:
        return parse_duration(value, field)
    except ConfigError as exc:
        raise _Invalid(node, *_split(exc)) from None


def _split(exc: ConfigError) -> tuple[str, str]:
    """A value's own `field: message` check, as the (field, message) of an _Invalid with a line."""
    field, _, message = str(exc).partition(": ")
    return field, message


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
    if isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG:
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




def _percentage(node: yaml.Node, field: str) -> float:
    value = _construct(node) if isinstance(node, yaml.ScalarNode) else None
    if not is_percentage(value):
        raise _Invalid(node, field, f"must be a number from 0 to 100, got {_shown(node)}")
    return float(value)


def _regex(node: yaml.Node, field: str) -> str:
    pattern: str = _scalar(node, field, str, "a regular expression string")
    try:
        check_key_pattern(pattern)
    except ValueError as exc:
        raise _Invalid(node, field, str(exc)) from None
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
