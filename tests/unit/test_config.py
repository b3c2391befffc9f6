"""The server config (contract §2) is validated whole, with errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import load_config, parse_config
from proxy.errors import ConfigError
from tests.support.paths import ROOT

VALID = {
    "listen": "127.0.0.1:50051",
    "flags": "flags.yaml",
    "state_dir": "../data/state",
    "backends": {"old": {"type": "jsonfile", "path": "../data/legacy.json"}, "new": {"type": "sqlite", "path": "x.db"}},
}


def test_shipped_config_loads_with_paths_relative_to_its_folder() -> None:
    """config/turnout.yaml names data/legacy.json and data/new.sqlite relative to the config folder."""
    config = load_config(ROOT / "config" / "turnout.yaml")
    assert config.old.type == "jsonfile"
    assert config.old.path == ROOT / "data" / "legacy.json"
    assert config.new.type == "sqlite"
    assert config.new.path == ROOT / "data" / "new.sqlite"
    assert config.flags == ROOT / "config" / "flags.yaml"
    assert config.admin_listen == "127.0.0.1:9465"
    assert config.admin_http == "127.0.0.1:9464"
    assert config.max_value_bytes == 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"listen": "nowhere"}, "listen: must be host:port"),
        ({"listen": "h:99999"}, "listen: must be host:port with a port 0-65535"),
        ({"surprise": 1}, "surprise: unknown field"),
        ({"backends": {"old": {"type": "memory"}}}, "backends.new: required"),
        ({"backends": {"old": {"type": "floppy"}, "new": {"type": "memory"}}}, "backends.old.type: must be one of"),
        ({"backends": {"old": {"type": "sqlite"}, "new": {"type": "memory"}}}, "backends.old.path: required"),
        ({"backends": {"old": {"type": "memory", "path": "x"}, "new": {"type": "memory"}}}, "takes no path"),
        ({"max_value_bytes": "big"}, "max_value_bytes: must be an integer"),
        ({"max_value_bytes": 0}, "max_value_bytes: must be positive"),
        ({"max_value_bytes": 3_000_000_000}, "max_value_bytes: at most 1073741824"),
        ({"backends": {"old": {"type": "jsonfile", "path": "a.json", "group_comit": False}, "new": {"type": "memory"}}},
         "backends.old.group_comit: unknown field for a jsonfile backend"),
        ({"backends": {"old": {"type": "memory"}, "new": {"type": "memory", "size": 1}}},
         "backends.new.size: unknown field for a memory backend"),
        ({"admin": {"listen": 5}}, "admin.listen: must be host:port"),
        ({"admin": {"http": "nowhere"}}, "admin.http: must be host:port"),
        ({"admin": {"http": "h:70000"}}, "admin.http: must be host:port with a port 0-65535"),
        ({"admin": {"htpp": "127.0.0.1:9464"}}, "admin.htpp: unknown field"),
        ({"telemetry": {"record_keys": "yes"}}, "telemetry.record_keys: must be true or false"),
        ({"state_dir": ""}, "state_dir: must be a non-empty path"),
    ],
)
def test_invalid_config_names_the_field(change: dict[str, object], message: str, tmp_path: Path) -> None:
    """Each kind of mistake is refused with a message that names the offending field."""
    with pytest.raises(ConfigError, match=message):
        parse_config({**VALID, **change}, base=tmp_path)


def test_unreadable_or_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file or broken YAML gives a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("listen: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ConfigError, match="config: must be a mapping"):
        load_config(scalar)


def test_admin_http_is_optional_and_without_it_there_is_no_http_side(tmp_path: Path) -> None:
    """A config without admin.http has none (and the admin API on its default port); with it, the address given."""
    config = parse_config(VALID, base=tmp_path)
    assert (config.admin_listen, config.admin_http) == ("127.0.0.1:9465", None)
    config = parse_config({**VALID, "admin": {"listen": "127.0.0.1:0", "http": "0.0.0.0:0", "token_file": "t"}},
                          base=tmp_path)
    assert (config.admin_listen, config.admin_http) == ("127.0.0.1:0", "0.0.0.0:0")
