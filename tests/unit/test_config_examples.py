"""Every example config in config/examples loads, with its variables set as its comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.backends.registry import STORE_TYPES
from proxy.config import BackendSpec, load_config
from proxy.errors import ConfigError
from tests.support.paths import ROOT

EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.yaml"))
VARIABLES = {"TURNOUT_PG_DSN": "postgresql://turnout:pw@127.0.0.1:5432/turnout", "TURNOUT_REDIS_PASSWORD": "pw"}


def test_there_are_examples_for_each_server_store() -> None:
    kinds = {spec.type for path in EXAMPLES for spec in _load(path)}
    assert {name for name, entry in STORE_TYPES.items() if entry.server} <= kinds


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_loads_and_names_its_flag_file_and_state_dir_in_the_repository(path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in VARIABLES.items():
        monkeypatch.setenv(name, value)
    config = load_config(path)
    assert config.flags == ROOT / "config" / "flags.yaml"
    assert config.state_dir == ROOT / "data" / "state"


@pytest.mark.parametrize("path", [p for p in EXAMPLES if "${" in p.read_text()], ids=lambda p: p.name)
def test_an_example_with_a_variable_refuses_to_load_without_it(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="environment variable TURNOUT_"):
        load_config(path)


def _load(path: Path) -> tuple[BackendSpec, ...]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in VARIABLES.items():
            patch.setenv(name, value)
        config = load_config(path)
    return (config.old, config.new)
