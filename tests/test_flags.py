"""The flag file (contract §3) is validated whole; errors name the file, the line and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from proxy.cli import main
from proxy.errors import ConfigError
from proxy.flags import Flags, parse_flags

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "config" / "flags.schema.json").read_text())

VALID = [
    "",
    "{}",
    "revision: '2026-11-23.1'\nuse_new_storage: true\nshadow_mode_enabled: true\n",
    "traffic_percentage: {read: 10, write: 12.5}\n",
    "traffic_percentage: {read: 0, write: 100}\n",
    "enabled_for_keys: ['^session:', 'cart:[0-9]+$']\ndisabled_for_keys: ['^billing:']\n",
    "enabled_for_users: [checkout, search]\nread_only: true\nbucket_salt: 'v2'\n",
    "enabled_for_keys:\n",
    "revision: 7\n",
]

INVALID = [
    ("surprise: 1\n", 1, "surprise: unknown field"),
    ("use_new_storage: true\ntraffic_percentage:\n  read: 150\n", 3, "traffic_percentage.read: must be a number from 0 to 100"),
    ("traffic_percentage: {write: -1}\n", 1, "traffic_percentage.write: must be a number from 0 to 100"),
    ("traffic_percentage: {read: true}\n", 1, "traffic_percentage.read: must be a number"),
    ("traffic_percentage: {read: '10'}\n", 1, "traffic_percentage.read: must be a number"),
    ("traffic_percentage: {reads: 10}\n", 1, "traffic_percentage.reads: unknown field"),
    ("traffic_percentage: 10\n", 1, "traffic_percentage: must be a mapping"),
    ("use_new_storage: 'yes please'\n", 1, "use_new_storage: must be true or false"),
    ("read_only: 1\n", 1, "read_only: must be true or false"),
    ("shadow_mode_enabled: null\n", 1, "shadow_mode_enabled: must be true or false"),
    ("enabled_for_keys: '^x'\n", 1, "enabled_for_keys: must be a list"),
    ("revision: r\n\ndisabled_for_keys: ['(unclosed']\n", 3, "disabled_for_keys[0]: regular expression does not compile"),
    ("enabled_for_keys: [3]\n", 1, "enabled_for_keys[0]: must be a regular expression string"),
    ("enabled_for_users: [checkout, {a: 1}]\n", 1, "enabled_for_users[1]: must be a string"),
    ("bucket_salt: 5\n", 1, "bucket_salt: must be a string"),
    ("- a\n- b\n", 1, "flags: must be a mapping"),
]


def test_empty_file_means_the_defaults_everything_to_old() -> None:
    """An empty or absent set of fields gives the defaults: new unused, nothing compared."""
    assert parse_flags("") == Flags()
    assert Flags() == Flags(use_new_storage=False, shadow_mode_enabled=False, read_percentage=0.0,
                            write_percentage=0.0, read_only=False)


def test_every_field_is_read() -> None:
    """Each field of the contract lands in the Flags value."""
    flags = parse_flags(
        "revision: '2026-11-23.1'\nuse_new_storage: true\nshadow_mode_enabled: true\n"
        "traffic_percentage: {read: 10, write: 12.5}\nenabled_for_keys: ['^session:']\n"
        "disabled_for_keys: ['^billing:']\nenabled_for_users: [checkout]\nread_only: true\nbucket_salt: s\n"
    )
    assert flags == Flags(revision="2026-11-23.1", use_new_storage=True, shadow_mode_enabled=True,
                          read_percentage=10.0, write_percentage=12.5, enabled_for_keys=("^session:",),
                          disabled_for_keys=("^billing:",), enabled_for_users=("checkout",), read_only=True,
                          bucket_salt="s")


@pytest.mark.parametrize(("text", "line", "message"), INVALID)
def test_invalid_flags_are_refused_naming_line_and_field(text: str, line: int, message: str) -> None:
    """Each kind of mistake is refused with the file, the line and the field in the message."""
    with pytest.raises(ConfigError) as err:
        parse_flags(text, "flags.yaml")
    assert str(err.value).startswith(f"flags.yaml:{line}: ")
    assert message in str(err.value)


@pytest.mark.parametrize("text", ["a: [\n", "use_new_storage: true\n  bad indent: 1\n", "\tx: 1\n"])
def test_broken_yaml_names_the_line(text: str) -> None:
    """A file that is not YAML at all is refused with the line where parsing stopped."""
    with pytest.raises(ConfigError, match=r"^flags\.yaml:\d+: not valid YAML"):
        parse_flags(text, "flags.yaml")


def test_a_field_given_twice_is_refused() -> None:
    """A duplicated field is an error, not a silent last-one-wins."""
    with pytest.raises(ConfigError, match=r"flags\.yaml:2: read_only: appears twice"):
        parse_flags("read_only: true\nread_only: false\n", "flags.yaml")


def test_invalid_utf8_is_refused() -> None:
    """A flag file that is not UTF-8 is refused with a clear message."""
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_flags(b"revision: '\xff'\n", "flags.yaml")


def _schema_accepts(text: str) -> bool:
    try:
        jsonschema.validate(yaml.safe_load(text), SCHEMA, format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError:
        return False
    return True


def _code_accepts(text: str) -> bool:
    try:
        parse_flags(text)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("text", VALID + [case[0] for case in INVALID])
def test_schema_and_code_agree(text: str) -> None:
    """The JSON Schema that editors use accepts exactly what the proxy accepts."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert _schema_accepts(text) == _code_accepts(text)


def test_shipped_flag_file_is_valid_and_sends_everything_to_old() -> None:
    """config/flags.yaml validates, names its schema for editors, and keeps new unused."""
    text = (ROOT / "config" / "flags.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=flags.schema.json")
    flags = parse_flags(text)
    assert not flags.use_new_storage
    assert _schema_accepts(text)


def test_check_flags_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`turnout check-flags` exits 0 for a valid file and 1 with the error for an invalid one."""
    good = tmp_path / "good.yaml"
    good.write_text("revision: r9\n")
    assert main(["check-flags", str(good)]) == 0
    assert "valid (revision 'r9')" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("revision: r9\ntraffic_percentage: {read: 101}\n")
    assert main(["check-flags", str(bad)]) == 1
    assert "bad.yaml:2: traffic_percentage.read" in capsys.readouterr().err
    assert main(["check-flags", str(bad), "--json"]) == 1
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert result["valid"] is False
    assert "traffic_percentage.read" in result["error"]
