"""Server store specs in the config (contract §2): their options, `${NAME}` expansion, and passwords
kept out of everything the proxy shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import load_config, parse_config
from proxy.errors import ConfigError
from proxy.secrets import mask


def config_with(old: dict[str, Any], new: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"listen": "127.0.0.1:0", "flags": "flags.yaml", "state_dir": "state",
            "backends": {"old": old, "new": new or {"type": "memory"}}}


def test_a_postgres_spec_has_its_defaults_filled_in(tmp_path: Path) -> None:
    """Only `dsn` is required; the table, pool and timeouts take the documented defaults."""
    spec = parse_config(config_with({"type": "postgres", "dsn": "postgresql://app@127.0.0.1/app"}), tmp_path).old
    assert spec.path is None
    assert dict(spec.options) == {"dsn": "postgresql://app@127.0.0.1/app", "table": "kv", "pool_size": 8,
                                  "connect_timeout": 5.0, "call_timeout": 5.0}


def test_a_redis_spec_and_a_grpc_spec_read_every_option(tmp_path: Path) -> None:
    """Each declared option is read with its kind: flags stay bools, counts ints, paths relative to the config."""
    config = parse_config(config_with(
        {"type": "redis", "url": "redis://127.0.0.1:6379/0", "key_prefix": "app:", "cluster": True, "pool_size": 4,
         "call_timeout": 0.5},
        {"type": "grpc", "target": "10.1.2.3:50051", "ca_file": "ca.pem", "retries": 2}), tmp_path)
    assert config.old.options["cluster"] is True
    assert config.old.options["key_prefix"] == "app:"
    assert config.old.options["call_timeout"] == 0.5
    assert config.new.options["ca_file"] == tmp_path / "ca.pem"
    assert config.new.options["retries"] == 2
    assert config.new.options["cert_file"] is None


@pytest.mark.parametrize(("backend", "message"), [
    ({"type": "postgres"}, "backends.old.dsn: required"),
    ({"type": "postgres", "dsn": 5}, "backends.old.dsn: must be a string"),
    ({"type": "postgres", "dsn": "postgresql://x", "table": "kv; drop table users"}, "backends.old.table: must be an SQL name"),
    ({"type": "postgres", "dsn": "postgresql://x", "pool_size": 0}, "backends.old.pool_size: must be a whole number"),
    ({"type": "postgres", "dsn": "postgresql://x", "call_timeout": -1}, "backends.old.call_timeout: must be a positive"),
    ({"type": "postgres", "dsn": "postgresql://x", "call_timeout": True}, "backends.old.call_timeout: must be a positive"),
    ({"type": "postgres", "dsn": "postgresql://x", "tabel": "kv"}, "backends.old.tabel: unknown field for a postgres"),
    ({"type": "redis", "url": "http://127.0.0.1:6379"}, "backends.old.url: must start with redis://"),
    ({"type": "redis", "url": "redis://h", "cluster": "yes"}, "backends.old.cluster: must be true or false"),
    ({"type": "redis", "url": "unix:///tmp/r.sock", "cluster": True}, "backends.old.cluster: a Redis Cluster is reached over TCP"),
    ({"type": "redis", "url": "redis://h", "nodes": "h2:7001"}, "backends.old.nodes: more nodes to start from are for"),
    ({"type": "redis", "url": "redis://h", "cluster": True, "nodes": "h2:7001,h3"},
     "backends.old.nodes: each must be host:port, got 'h3'"),
    ({"type": "grpc", "target": "nowhere"}, "backends.old.target: must be host:port"),
    ({"type": "jsonfile", "path": "l.json", "flush_interval": 0}, "backends.old.flush_interval: must be a positive"),
    ({"type": "sqlite", "path": "n.sqlite", "flush_interval": 1}, "backends.old.flush_interval: unknown field for a sqlite"),
])
def test_a_bad_option_is_refused_naming_its_field(backend: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_config(config_with(backend), tmp_path)


def test_environment_variables_are_expanded_in_any_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`${NAME}` anywhere in a string value is the variable's value; `$${` stays a literal `${`."""
    monkeypatch.setenv("TURNOUT_TEST_PASSWORD", "s3cret")
    monkeypatch.setenv("TURNOUT_TEST_PORT", "55432")
    monkeypatch.setenv("TURNOUT_TEST_DIR", "elsewhere")
    raw = config_with({"type": "postgres", "dsn": "postgresql://app:${TURNOUT_TEST_PASSWORD}@127.0.0.1:${TURNOUT_TEST_PORT}/app"},
                      {"type": "redis", "url": "redis://127.0.0.1/0", "key_prefix": "cost$${x}:"})
    raw["state_dir"] = "${TURNOUT_TEST_DIR}/state"
    config = parse_config(raw, tmp_path)
    assert config.old.options["dsn"] == "postgresql://app:s3cret@127.0.0.1:55432/app"
    assert config.new.options["key_prefix"] == "cost${x}:"
    assert config.state_dir == tmp_path / "elsewhere" / "state"


def test_an_unset_variable_is_refused_naming_the_field_and_the_variable(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing password is an error at start, not an empty password that fails later, far from the cause."""
    monkeypatch.delenv("TURNOUT_TEST_UNSET", raising=False)
    raw = config_with({"type": "postgres", "dsn": "postgresql://app:${TURNOUT_TEST_UNSET}@h/app"})
    with pytest.raises(ConfigError, match=r"backends\.old\.dsn: environment variable TURNOUT_TEST_UNSET is not set"):
        parse_config(raw, tmp_path)
    with pytest.raises(ConfigError, match=r"listen: \$\{not a name\} is not an environment variable name"):
        parse_config({**raw, "listen": "${not a name}"}, tmp_path)


def test_expansion_also_applies_to_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_TEST_URL", "redis://:pw@127.0.0.1:6390/1")
    (tmp_path / "turnout.yaml").write_text(
        "listen: 127.0.0.1:0\nflags: flags.yaml\nstate_dir: state\n"
        "backends:\n  old: {type: jsonfile, path: legacy.json, flush_interval: 0.5}\n"
        "  new: {type: redis, url: '${TURNOUT_TEST_URL}'}\n")
    config = load_config(tmp_path / "turnout.yaml")
    assert config.new.options["url"] == "redis://:pw@127.0.0.1:6390/1"
    assert config.old.options["flush_interval"] == 0.5


def test_a_spec_never_shows_its_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither repr (what a log of the spec would print) nor describe() holds the password."""
    monkeypatch.setenv("TURNOUT_TEST_PASSWORD", "s3cret-Pw")
    config = parse_config(config_with(
        {"type": "postgres", "dsn": "postgresql://app:${TURNOUT_TEST_PASSWORD}@db:5432/app"},
        {"type": "redis", "url": "redis://:${TURNOUT_TEST_PASSWORD}@cache:6379/0"}), tmp_path)
    for spec in (config.old, config.new):
        assert "s3cret-Pw" not in repr(spec)
        assert "s3cret-Pw" not in spec.describe()
    assert config.old.describe() == "postgres dsn=postgresql://app:***@db:5432/app"
    assert config.new.describe() == "redis url=redis://:***@cache:6379/0"
    assert parse_config(config_with({"type": "jsonfile", "path": "l.json"}), tmp_path).old.describe() == \
        f"jsonfile {tmp_path / 'l.json'}"


@pytest.mark.parametrize(("text", "secrets", "shown"), [
    ("postgresql://app:pw@db/app", (), "postgresql://app:***@db/app"),
    ("redis://:pw@cache:6379/0", (), "redis://:***@cache:6379/0"),
    ("host=db user=app password=pw dbname=app", (), "host=db user=app password=*** dbname=app"),
    ("host=db password='p w\\'x' dbname=app", (), "host=db password=*** dbname=app"),
    ("postgresql://db/app?password=pw&sslmode=require", (), "postgresql://db/app?password=***&sslmode=require"),
    ('connection failed: FATAL: password authentication failed for user "app" (pw=hunter2)', ("hunter2",),
     'connection failed: FATAL: password authentication failed for user "app" (pw=***)'),
    ("postgresql://app@db/app", (), "postgresql://app@db/app"),
])
def test_mask_hides_every_password_form(text: str, secrets: tuple[str, ...], shown: str) -> None:
    assert mask(text, *secrets) == shown
