"""The config's `hooks:` section as frozen values: which events a hook hears, and where it is sent.

Kept apart from proxy.safety.hooks (which runs them, over aiohttp) so that proxy.config can parse and
validate the section without importing an HTTP client: a config is read by every `turnout` command.

Choices where the brief is silent:
- `on` omitted, `on: all`, or `all` in the list: every event but `confirm`. A confirm hook is a gate
  (its refusal holds a canary step), so a plain notification receiver must never become one by accident.
- `timeout` is more than 0 and at most 60 s (default 5 s): a hook may hold a step, never a migration.
- A hook is named by its place in the file (`hooks[1]`) and shown with a url's scheme, host and path
  only, a command's program only: a url's query or a command's arguments may hold a token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from proxy.errors import ConfigError

Event = Literal["rollback", "resume", "canary_step", "cutover_start", "cutover_end", "confirm"]
EVENTS: tuple[Event, ...] = ("rollback", "resume", "canary_step", "cutover_start", "cutover_end", "confirm")
#: What `on: all` (or no `on`) means.
NOTIFY_EVENTS: frozenset[Event] = frozenset(e for e in EVENTS if e != "confirm")

DEFAULT_TIMEOUT_S = 5.0
MAX_TIMEOUT_S = 60.0

_FIELDS = ("on", "url", "command", "timeout")
_TIMEOUT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


@dataclass(frozen=True, slots=True)
class HookSpec:
    """One hook: the events it hears, and either a url to POST each event to or a command to run."""

    on: frozenset[Event]
    #: Not in repr: the query may hold a token.
    url: str | None = field(default=None, repr=False)
    #: argv, run without a shell. Not in repr: an argument may hold a token.
    command: tuple[str, ...] = field(default=(), repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    #: Where the hook sits in the config (`hooks[1]`): how logs and refusals name it.
    name: str = "hook"

    def __post_init__(self) -> None:
        if (self.url is None) == (not self.command):
            raise ConfigError(f"{self.name}: give exactly one of url or command")
        if not self.on:
            raise ConfigError(f"{self.name}.on: must name at least one event")
        for event in self.on:
            if event not in EVENTS:
                raise ConfigError(f"{self.name}.on: unknown event {event!r} (one of {', '.join(EVENTS)})")
        if self.url is not None:
            check_url(self.url, f"{self.name}.url")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, int | float) \
                or not 0 < self.timeout_s <= MAX_TIMEOUT_S:
            raise ConfigError(f"{self.name}.timeout: must be more than 0 and at most {MAX_TIMEOUT_S:g}s, "
                              f"got {self.timeout_s!r}s")

    @property
    def target(self) -> str:
        """What the hook reaches, safe to log: `POST https://host:port/path` or `command /usr/bin/x`."""
        if self.url is not None:
            parts = urlsplit(self.url)
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            port = f":{parts.port}" if parts.port is not None else ""
            return f"POST {parts.scheme}://{host}{port}{parts.path}"
        return f"command {self.command[0]}"

    def describe(self) -> str:
        return f"{self.name} ({self.target})"


def check_url(url: str, where: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid url ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Not the url itself in the message: its query may hold a token.
        raise ConfigError(f"{where}: must be an http:// or https:// url with a host")


def parse_hooks(raw: object) -> tuple[HookSpec, ...]:
    """The `hooks:` section (already through ${NAME} expansion); ConfigError naming the field."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"hooks: must be a list, got {type(raw).__name__}")
    return tuple(_hook(entry, f"hooks[{index}]") for index, entry in enumerate(raw))


def _hook(raw: object, name: str) -> HookSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: must be a mapping, got {type(raw).__name__}")
    if True in raw and "on" not in raw:
        # The config is read as YAML 1.1, where a bare `on:` key is the boolean true (GitHub Actions
        # workflows meet the same): it can only have meant `on`.
        raw = {("on" if key is True else key): value for key, value in raw.items()}
    for key in raw:
        if key not in _FIELDS:
            raise ConfigError(f"{name}.{key}: unknown field (one of {', '.join(_FIELDS)})")
    has_url, has_command = raw.get("url") is not None, raw.get("command") is not None
    if has_url == has_command:
        raise ConfigError(f"{name}: give exactly one of url or command")
    url: str | None = None
    command: tuple[str, ...] = ()
    if has_url:
        if not isinstance(raw["url"], str):
            raise ConfigError(f"{name}.url: must be a string, got {type(raw['url']).__name__}")
        url = raw["url"]
    else:
        command = _command(raw["command"], f"{name}.command")
    return HookSpec(on=_events(raw.get("on"), f"{name}.on"), url=url, command=command,
                    timeout_s=parse_timeout(raw.get("timeout", DEFAULT_TIMEOUT_S), f"{name}.timeout"), name=name)


def _events(raw: object, where: str) -> frozenset[Event]:
    if raw is None or raw == "all":
        return NOTIFY_EVENTS
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: must be a list of event names (or all), got {raw!r}")
    events: set[Event] = set()
    for index, name in enumerate(raw):
        if name == "all":
            events |= NOTIFY_EVENTS
            continue
        event = next((e for e in EVENTS if e == name), None)
        if event is None:
            raise ConfigError(f"{where}[{index}]: unknown event {name!r} (one of all, {', '.join(EVENTS)})")
        events.add(event)
    return frozenset(events)


def _command(raw: object, where: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raise ConfigError(f"{where}: must be a list of strings (the program and its arguments; no shell runs it)")
    if not isinstance(raw, Sequence) or not raw:
        raise ConfigError(f"{where}: must be a non-empty list of strings, got {raw!r}")
    for index, argument in enumerate(raw):
        if not isinstance(argument, str):
            raise ConfigError(f"{where}[{index}]: must be a string, got {type(argument).__name__}")
    if not raw[0]:
        raise ConfigError(f"{where}[0]: must name the program to run")
    return tuple(raw)


def parse_timeout(raw: object, where: str) -> float:
    """Seconds from `5`, `5s`, `500ms` or `1m`, more than 0 and at most 60 s."""
    seconds: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        seconds = float(raw)
    elif isinstance(raw, str) and (match := _TIMEOUT.match(raw)):
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds is None or not 0 < seconds <= MAX_TIMEOUT_S:
        raise ConfigError(f"{where}: must be a duration more than 0 and at most {MAX_TIMEOUT_S:g}s "
                          f"such as 5s, 500ms or 1m, got {raw!r}")
    return seconds


def format_timeout(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"
