"""The config's `hooks:` section: each hook validated whole, errors naming the field, tokens never shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import load_config, parse_config
from proxy.errors import ConfigError
from proxy.safety.hookspec import NOTIFY_EVENTS, HookSpec

BASE = {
    "listen": "127.0.0.1:50051",
    "flags": "flags.yaml",
    "state_dir": "state",
    "backends": {"old": {"type": "memory"}, "new": {"type": "memory"}},
}
URL = "http://127.0.0.1:9000/turnout"


def hooks(*entries: Any) -> tuple[HookSpec, ...]:
    return parse_config({**BASE, "hooks": list(entries)}, base=Path("/srv")).hooks


def test_no_hooks_section_means_no_hooks() -> None:
    """Hooks are opt-in."""
    assert parse_config(BASE, base=Path("/srv")).hooks == ()
    assert hooks() == ()


def test_the_briefs_example_parses() -> None:
    """A webhook and a confirm command, as config/turnout.yaml would hold them."""
    web, gate = hooks(
        {"on": ["rollback", "resume", "canary_step", "cutover_start", "cutover_end"], "url": URL, "timeout": "5s"},
        {"on": ["confirm"], "command": ["/usr/local/bin/approve", "--team", "payments"]})
    assert web.on == NOTIFY_EVENTS
    assert web.url == URL
    assert web.command == ()
    assert web.timeout_s == 5.0
    assert gate.on == {"confirm"}
    assert gate.url is None
    assert gate.command == ("/usr/local/bin/approve", "--team", "payments")
    assert (web.name, gate.name) == ("hooks[0]", "hooks[1]")


@pytest.mark.parametrize("on", [None, "all", ["all"]])
def test_on_omitted_or_all_is_every_event_but_confirm(on: Any) -> None:
    """A notification receiver never becomes a gate by accident."""
    entry = {"url": URL} if on is None else {"url": URL, "on": on}
    [hook] = hooks(entry)
    assert hook.on == NOTIFY_EVENTS
    assert "confirm" not in hook.on


def test_all_with_confirm_is_every_event() -> None:
    [hook] = hooks({"url": URL, "on": ["all", "confirm"]})
    assert hook.on == NOTIFY_EVENTS | {"confirm"}


@pytest.mark.parametrize(("raw", "seconds"), [(5, 5.0), (2.5, 2.5), ("5s", 5.0), ("500ms", 0.5), ("1m", 60.0),
                                              ("60", 60.0)])
def test_a_timeout_is_seconds_or_a_duration(raw: Any, seconds: float) -> None:
    [hook] = hooks({"url": URL, "timeout": raw})
    assert hook.timeout_s == seconds


def test_the_default_timeout_is_5_seconds() -> None:
    [hook] = hooks({"command": ["/bin/true"]})
    assert hook.timeout_s == 5.0


def test_a_variable_in_a_url_or_command_is_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    """${NAME} applies to hooks as to every string of the config."""
    monkeypatch.setenv("HOOK_TOKEN", "tok123")
    url, command = hooks({"url": URL + "?token=${HOOK_TOKEN}"}, {"command": ["/bin/notify", "--token=${HOOK_TOKEN}"]})
    assert url.url == URL + "?token=tok123"
    assert command.command == ("/bin/notify", "--token=tok123")


def test_a_hook_shows_its_target_without_query_or_password() -> None:
    """Logs name a hook by scheme, host, port and path, or by its program: a token may sit elsewhere."""
    url, command = hooks({"url": "https://ops:pw@hooks.example.com:8443/t/turnout?token=abc#frag"},
                         {"command": ["/bin/notify", "--token", "abc"]})
    assert url.describe() == "hooks[0] (POST https://hooks.example.com:8443/t/turnout)"
    assert command.describe() == "hooks[1] (command /bin/notify)"
    assert "abc" not in repr(url) + repr(command)
    assert "pw" not in repr(url)


BAD = [
    ({"hooks": {"url": URL}}, "hooks: must be a list"),
    ({"hooks": ["http://x"]}, r"hooks\[0\]: must be a mapping"),
    ({"hooks": [{"url": URL, "method": "PUT"}]}, r"hooks\[0\]\.method: unknown field"),
    ({"hooks": [{"url": URL}, {"on": ["rolback"], "url": URL}]},
     r"hooks\[1\]\.on\[0\]: unknown event 'rolback' \(one of all, rollback, resume, canary_step, "),
    ({"hooks": [{"on": [], "url": URL}]}, r"hooks\[0\]\.on: must be a list of event names"),
    ({"hooks": [{"on": {"rollback": True}, "url": URL}]}, r"hooks\[0\]\.on: must be a list of event names"),
    ({"hooks": [{"on": ["rollback", 3], "url": URL}]}, r"hooks\[0\]\.on\[1\]: unknown event 3"),
    ({"hooks": [{"on": ["rollback"]}]}, r"hooks\[0\]: give exactly one of url or command"),
    ({"hooks": [{"url": URL, "command": ["/bin/true"]}]}, r"hooks\[0\]: give exactly one of url or command"),
    ({"hooks": [{"url": 9000}]}, r"hooks\[0\]\.url: must be a string"),
    ({"hooks": [{"url": "ftp://127.0.0.1/x"}]}, r"hooks\[0\]\.url: must be an http:// or https:// url with a host"),
    ({"hooks": [{"url": "http:///path-only"}]}, r"hooks\[0\]\.url: must be an http:// or https:// url"),
    ({"hooks": [{"url": "127.0.0.1:9000/turnout"}]}, r"hooks\[0\]\.url: must be an http:// or https://"),
    ({"hooks": [{"url": "http://127.0.0.1:99999/x"}]}, r"hooks\[0\]\.url: not a valid url"),
    ({"hooks": [{"command": "/usr/local/bin/approve --team payments"}]},
     r"hooks\[0\]\.command: must be a list of strings \(the program and its arguments; no shell"),
    ({"hooks": [{"command": []}]}, r"hooks\[0\]\.command: must be a non-empty list"),
    ({"hooks": [{"command": ["/bin/approve", 3]}]}, r"hooks\[0\]\.command\[1\]: must be a string, got int"),
    ({"hooks": [{"command": [""]}]}, r"hooks\[0\]\.command\[0\]: must name the program"),
    ({"hooks": [{"url": URL, "timeout": "61s"}]}, r"hooks\[0\]\.timeout: must be a duration more than 0 and at most 60s"),
    ({"hooks": [{"url": URL, "timeout": 0}]}, r"hooks\[0\]\.timeout: must be a duration more than 0"),
    ({"hooks": [{"url": URL, "timeout": "fast"}]}, r"hooks\[0\]\.timeout: .* got 'fast'"),
    ({"hooks": [{"url": URL, "timeout": True}]}, r"hooks\[0\]\.timeout: .* got True"),
    ({"hooks": [{"url": URL, "timeout": "2h"}]}, r"hooks\[0\]\.timeout: .* got '2h'"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_hook_is_refused_naming_the_field(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, **extra}, base=Path("/srv"))


def test_a_bad_url_never_shows_its_token() -> None:
    """The error names the field, not the url: its query may hold a token."""
    with pytest.raises(ConfigError) as refused:
        hooks({"url": "ftp://hooks.example.com/x?token=abc123"})
    assert "abc123" not in str(refused.value)


def test_a_hook_built_in_code_is_held_to_the_same_rules() -> None:
    """HookSpec checks itself, so a hook made by a test or a tool cannot skip the config's rules."""
    with pytest.raises(ConfigError, match="exactly one of url or command"):
        HookSpec(on=frozenset({"rollback"}))
    with pytest.raises(ConfigError, match="unknown event 'nope'"):
        HookSpec(on=frozenset({"nope"}), url=URL)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at most 60s"):
        HookSpec(on=frozenset({"rollback"}), url=URL, timeout_s=120)


def test_a_bare_on_key_as_yaml_1_1_reads_it_is_the_hook_events(tmp_path: Path) -> None:
    """`on:` unquoted, as an operator writes it: YAML 1.1 reads the key as true; it is the events."""
    (tmp_path / "turnout.yaml").write_text(
        "listen: 127.0.0.1:0\nflags: flags.yaml\nstate_dir: state\n"
        "backends: {old: {type: memory}, new: {type: memory}}\n"
        "hooks:\n  - on: [rollback, resume]\n    url: http://127.0.0.1:9/hook\n")
    (hook,) = load_config(tmp_path / "turnout.yaml").hooks
    assert hook.on == frozenset({"rollback", "resume"})
