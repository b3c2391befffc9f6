"""The server config (contract §2): read once at start, validated whole, errors naming the field.

Relative paths are relative to the config file's folder, so the shipped config works from any
working directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.backends.options import read_options
from proxy.backends.registry import STORE_TYPES
from proxy.errors import ConfigError
from proxy.safety.hookspec import HookSpec, parse_hooks
from proxy.secrets import mask

DEFAULT_CONFIG = Path("config/turnout.yaml")
DEFAULT_MAX_VALUE_BYTES = 4 * 1024 * 1024
#: The largest max_value_bytes accepted: a gRPC message carries at most 2 GiB, key and framing included.
MAX_MAX_VALUE_BYTES = 1024 * 1024 * 1024
MAX_KEY_BYTES = 1024
#: A plain count, so an operator can reason about it. Calls past it are refused, not queued, so it
#: sits above the bursts callers make (250 Sets at once on one channel to a SQLite proxy reached 64
#: in flight; the bench keeps 32): normal traffic never meets it. A memory bound is then a choice:
#: requests being received take up to this many receive limits (256 x 64 MiB at the defaults).
DEFAULT_MAX_CONCURRENT_CALLS = 256


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """How to open one backend: its type, its path, and its type's options (registry.STORE_TYPES)."""

    type: str
    path: Path | None = None
    #: Every option the type declares, defaults filled in. Not in repr: a dsn or url may hold a password.
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        """The spec as it may be shown in a log or `turnout status`: type and address, passwords masked."""
        entry = STORE_TYPES[self.type]
        where = str(self.path) if self.path is not None else " ".join(
            f"{o.name}={self.options[o.name]}" for o in entry.options
            if o.required and self.options.get(o.name) is not None)
        return mask(f"{self.type} {where}".strip())


@dataclass(frozen=True, slots=True)
class TlsSpec:
    """TLS on the data port (contract §5); with client_ca_file, callers must show a certificate it signed."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds one caller cannot push the proxy past (connections, idle time, calls at once); see `limits:`
    in the config.

    Together they must fit in the process's descriptor limit (RLIMIT_NOFILE, raised to its hard limit
    at start) with room kept for the stores, health and admin; otherwise `turnout serve` refuses to
    start. The defaults fit in the common 1024.
    """

    #: Connections the data port keeps open at once; past it a new one is closed as soon as accepted.
    max_connections: int = 512
    #: Connections the admin API and the HTTP side each keep open at once (past it: closed, 503 on HTTP).
    admin_max_connections: int = 32
    #: A data connection with no call for this long is closed (one that never completes its handshake
    #: after at most 10 s); an HTTP connection that has not sent a whole request for this long since it
    #: opened or since its last answer is closed, so a client dribbling its headers is cut off too.
    idle_timeout_s: float = 300.0
    #: Calls the data port runs at once, over all its connections (health and reflection count too);
    #: past it a call is refused with RESOURCE_EXHAUSTED before its request is read, so the requests
    #: being received stay within this many receive limits (max_value_bytes x 4 each, at least 64 MiB).
    #: Refused, not queued: set it above the calls your callers keep in flight.
    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS


@dataclass(frozen=True, slots=True)
class Config:
    listen: str
    flags: Path
    state_dir: Path
    old: BackendSpec
    new: BackendSpec
    admin_listen: str = "127.0.0.1:9465"
    #: The HTTP side (/metrics, the dashboard, /healthz); None: there is none.
    admin_http: str | None = None
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    record_keys: bool = False
    #: A file holding the bearer token every admin call and page must carry; None: loopback only.
    admin_token_file: Path | None = None
    tls: TlsSpec | None = None
    #: Discrepancy records hold the two values only when this is true (contract §5).
    record_values: bool = False
    limits: Limits = field(default_factory=Limits)
    #: Webhooks and commands run on state changes (proxy.safety.hooks); none by default.
    hooks: tuple[HookSpec, ...] = ()
    source: Path | None = None


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The config to use: the one given, else $TURNOUT_CONFIG, else config/turnout.yaml."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("TURNOUT_CONFIG") or DEFAULT_CONFIG)


def load_config(path: str | os.PathLike[str]) -> Config:
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    # abspath, not resolve: a ConfigMap mount is a chain of symlinks that must stay visible to the watcher.
    return parse_config(raw, base=Path(os.path.abspath(source)).parent, source=source)


def parse_config(raw: object, base: Path, source: Path | None = None) -> Config:
    where = f"{source}: " if source else ""
    try:
        return _parse(raw, base, source)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


_TOP_FIELDS = {"listen", "flags", "state_dir", "backends", "admin", "max_value_bytes", "telemetry", "tls",
               "discrepancies", "limits", "hooks"}


def _parse(raw: object, base: Path, source: Path | None) -> Config:
    doc = _mapping(expand_environment(raw, ""), "config")
    _no_unknown(doc, _TOP_FIELDS, "")
    backends = _mapping(_required(doc, "backends", ""), "backends")
    _no_unknown(backends, {"old", "new"}, "backends.")
    admin = _mapping(doc.get("admin", {}), "admin")
    _no_unknown(admin, {"listen", "http", "token_file"}, "admin.")
    telemetry = _mapping(doc.get("telemetry", {}), "telemetry")
    _no_unknown(telemetry, {"record_keys"}, "telemetry.")
    max_value_bytes = doc.get("max_value_bytes", DEFAULT_MAX_VALUE_BYTES)
    if isinstance(max_value_bytes, bool) or not isinstance(max_value_bytes, int):
        raise ConfigError("max_value_bytes: must be an integer")
    if max_value_bytes <= 0:
        raise ConfigError("max_value_bytes: must be positive")
    if max_value_bytes > MAX_MAX_VALUE_BYTES:
        raise ConfigError(f"max_value_bytes: at most {MAX_MAX_VALUE_BYTES} (1 GiB), got {max_value_bytes}")
    record_keys = _flag(telemetry, "record_keys", "telemetry.")
    discrepancies = _mapping(doc.get("discrepancies", {}), "discrepancies")
    _no_unknown(discrepancies, {"record_values"}, "discrepancies.")
    if "token_file" not in admin:
        _loopback_only(admin)
    return Config(
        listen=_address(_required(doc, "listen", ""), "listen"),
        flags=_path(_required(doc, "flags", ""), "flags", base),
        state_dir=_path(_required(doc, "state_dir", ""), "state_dir", base),
        old=_backend(_required(backends, "old", "backends."), "backends.old", base),
        new=_backend(_required(backends, "new", "backends."), "backends.new", base),
        admin_listen=_address(admin.get("listen", "127.0.0.1:9465"), "admin.listen"),
        admin_http=_address(admin["http"], "admin.http") if admin.get("http") is not None else None,
        max_value_bytes=max_value_bytes,
        record_keys=record_keys,
        admin_token_file=_path(admin["token_file"], "admin.token_file", base) if "token_file" in admin else None,
        tls=_tls(doc["tls"], base) if doc.get("tls") is not None else None,
        record_values=_flag(discrepancies, "record_values", "discrepancies."),
        limits=_limits(doc.get("limits", {})),
        hooks=parse_hooks(doc.get("hooks")),
        source=source,
    )


# ${NAME} names an environment variable; $${ is a literal ${ (contract §2).
_ENV_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def expand_environment(raw: object, where: str) -> object:
    """The config tree with every `${NAME}` in a string value replaced by that environment variable.

    A name that is not set, or not a variable name, is an error naming the field: starting with a
    password silently empty would only fail later, far from the cause.
    """
    if isinstance(raw, str):
        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name = match.group(1)
            if not _ENV_NAME.match(name):
                raise ConfigError(f"{where or 'config'}: ${{{name}}} is not an environment variable name")
            value = os.environ.get(name)
            if value is None:
                raise ConfigError(f"{where or 'config'}: environment variable {name} is not set")
            return value

        return _ENV_REFERENCE.sub(substitute, raw)
    if isinstance(raw, Mapping):
        return {key: expand_environment(value, f"{where}.{key}" if where else str(key)) for key, value in raw.items()}
    if isinstance(raw, list):
        return [expand_environment(value, f"{where}[{index}]") for index, value in enumerate(raw)]
    return raw


def _flag(doc: Mapping[str, Any], key: str, prefix: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}{key}: must be true or false")
    return value


def _tls(raw: object, base: Path) -> TlsSpec:
    tls = _mapping(raw, "tls")
    _no_unknown(tls, {"cert_file", "key_file", "client_ca_file"}, "tls.")
    return TlsSpec(
        cert_file=_path(_required(tls, "cert_file", "tls."), "tls.cert_file", base),
        key_file=_path(_required(tls, "key_file", "tls."), "tls.key_file", base),
        client_ca_file=_path(tls["client_ca_file"], "tls.client_ca_file", base) if "client_ca_file" in tls else None,
    )


def _limits(raw: object) -> Limits:
    limits = _mapping(raw, "limits")
    _no_unknown(limits, {"max_connections", "admin_max_connections", "idle_timeout_s", "max_concurrent_calls"},
                "limits.")
    defaults = Limits()
    counts = {}
    for key in ("max_connections", "admin_max_connections", "max_concurrent_calls"):
        value = limits.get(key, getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"limits.{key}: must be a whole number of at least 1, got {value!r}")
        counts[key] = value
    idle = limits.get("idle_timeout_s", defaults.idle_timeout_s)
    if isinstance(idle, bool) or not isinstance(idle, int | float) or not 0 < idle < float("inf"):
        raise ConfigError(f"limits.idle_timeout_s: must be a positive number of seconds, got {idle!r}")
    return Limits(max_connections=counts["max_connections"], admin_max_connections=counts["admin_max_connections"],
                  idle_timeout_s=float(idle), max_concurrent_calls=counts["max_concurrent_calls"])


def _backend(raw: object, name: str, base: Path) -> BackendSpec:
    spec = _mapping(raw, name)
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in STORE_TYPES:
        known = ", ".join(sorted(STORE_TYPES))
        raise ConfigError(f"{name}.type: must be one of {known}, got {kind!r}")
    path: Path | None = None
    if STORE_TYPES[kind].at_path:
        path = _path(_required(spec, "path", f"{name}."), f"{name}.path", base)
    elif "path" in spec:
        raise ConfigError(f"{name}.path: a {kind} backend takes no path")
    entry = STORE_TYPES[kind]
    unknown = sorted(set(spec) - {"type", "path"} - {option.name for option in entry.options})
    if unknown:
        # A field the type does not take is a mistake (a typo, say), never silently ignored.
        raise ConfigError(f"{name}.{unknown[0]}: unknown field for a {kind} backend")
    try:
        options = read_options(entry.options, spec, base)
        if entry.check_options is not None:
            entry.check_options(options)
    except ValueError as exc:
        raise ConfigError(f"{name}.{exc}") from None
    return BackendSpec(type=kind, path=path, options=options)


def _mapping(raw: object, name: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: must be a mapping, got {type(raw).__name__}")
    return raw


def _required(doc: Mapping[str, Any], key: str, prefix: str) -> Any:
    if key not in doc or doc[key] is None:
        raise ConfigError(f"{prefix}{key}: required")
    return doc[key]


def _no_unknown(doc: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for key in doc:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}: unknown field")


def _path(raw: object, name: str, base: Path) -> Path:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{name}: must be a non-empty path string")
    path = Path(raw).expanduser()
    return path if path.is_absolute() else Path(os.path.abspath(base / path))


def _address(raw: object, name: str) -> str:
    if not isinstance(raw, str) or ":" not in raw:
        raise ConfigError(f"{name}: must be host:port, got {raw!r}")
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: must be host:port with a port 0-65535, got {raw!r}")
    return raw


def _loopback_only(admin: Mapping[str, Any]) -> None:
    """Without admin.token_file, the admin API and HTTP side may listen on loopback only (contract §5)."""
    for key in ("listen", "http"):
        if admin.get(key) is None:
            continue
        address = _address(admin[key], f"admin.{key}")
        if not _is_loopback(address.rpartition(":")[0]):
            raise ConfigError(f"admin.{key}: {address} is not a loopback address: set admin.token_file")


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere: only localhost is known to stay on the machine
