"""`turnout kv get|set|has|del|keys`: the KeyValue API from a shell, built on the Python client.

Exit status: 0 when the thing asked for holds; 1 when `get` or `has` finds the key absent;
2 when the call fails (the server's message goes to stderr).

TLS: the channel speaks TLS when `--ca-file`, `--cert-file` or `--key-file` is given, or when the
config's data port has `tls:` (then trusting the system's roots unless `--ca-file` names the CA).
The client's own files are options, not config: the server's config holds the server's key, which
is no client's to show.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import grpc
from turnout.client import KeyNotFound, SyncClient, TlsSettings, TurnoutError

from proxy.commands.common import add_config_argument, add_json_argument, emit, load, positive_seconds
from proxy.control.adminclient import kv_target

FAILED = 2


def register(subparsers: Any) -> None:
    kv = subparsers.add_parser(
        "kv", help="get, set, has, del and list keys through a running proxy",
        description="Call the running proxy's KeyValue API. Exit 0 on success, 1 when get/has find "
                    "the key absent, 2 when the call fails.",
    )
    actions = kv.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in [("get", "print a key's document (exit 1 when absent)"),
                            ("set", "store a JSON document ('-' reads it from stdin)"),
                            ("has", "exit 0 when the key is present, 1 when absent"),
                            ("del", "delete a key"),
                            ("keys", "list the keys that start with PREFIX (all keys without it)")]:
        parser = actions.add_parser(name, help=help_text, description=help_text)
        if name == "keys":
            parser.add_argument("prefix", nargs="?", default="")
        else:
            parser.add_argument("key")
        if name == "set":
            parser.add_argument("value", help="JSON text, or - for stdin")
        parser.add_argument("--target", help="proxy address HOST:PORT (default: listen from the config)")
        parser.add_argument("--user", help="caller name sent as x-turnout-user")
        parser.add_argument("--timeout", type=positive_seconds, default=5.0,
                            help="deadline per call, seconds (default 5)")
        parser.add_argument("--ca-file", help="PEM of the CA that signed the proxy's certificate (speaks TLS)")
        parser.add_argument("--cert-file", help="PEM of this client's certificate, for a proxy asking for mTLS")
        parser.add_argument("--key-file", help="PEM of the key of --cert-file")
        add_config_argument(parser)
        add_json_argument(parser)
        parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Only read the config when it is needed: with --target, no config file has to exist.
    config = None if args.target else load(args)
    target = args.target if config is None else kv_target(config)
    try:
        tls = _tls(args, config is not None and config.tls is not None)
        with SyncClient(target, user=args.user, timeout=args.timeout, tls=tls) as client:
            return _ACTIONS[args.action](client, args)
    except (TurnoutError, ValueError) as exc:
        print(f"turnout kv {args.action}: {exc}", file=sys.stderr)
        return FAILED


def _tls(args: argparse.Namespace, config_asks: bool) -> grpc.ChannelCredentials | None:
    """The TLS credentials of the options; None (plaintext) when none is given and the config has no tls.
    ValueError naming the option's setting when a file cannot be read."""
    if not (args.ca_file or args.cert_file or args.key_file or config_asks):
        return None
    return TlsSettings(ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file).credentials()


def _get(client: SyncClient, args: argparse.Namespace) -> int:
    try:
        value = client.get(args.key)
    except KeyNotFound:
        emit(args, {"key": args.key, "found": False}, "")
        if not args.json:
            print(f"turnout kv get: {args.key}: not found", file=sys.stderr)
        return 1
    emit(args, {"key": args.key, "found": True, "value": value}, json.dumps(value, ensure_ascii=False))
    return 0


def _set(client: SyncClient, args: argparse.Namespace) -> int:
    text: str = sys.stdin.read() if args.value == "-" else args.value
    # The text goes as it is: the proxy is the one judge of what a valid document is.
    client.set_raw(args.key, text.encode())
    emit(args, {"key": args.key, "stored": True}, "")
    return 0


def _has(client: SyncClient, args: argparse.Namespace) -> int:
    found = client.has(args.key)
    emit(args, {"key": args.key, "found": found}, "present" if found else "absent")
    return 0 if found else 1


def _del(client: SyncClient, args: argparse.Namespace) -> int:
    existed = client.delete(args.key)
    emit(args, {"key": args.key, "existed": existed}, "deleted" if existed else "was not there")
    return 0


def _keys(client: SyncClient, args: argparse.Namespace) -> int:
    keys = client.keys(args.prefix)
    if args.json:
        emit(args, {"prefix": args.prefix, "keys": list(keys)}, "")
        return 0
    try:
        for key in keys:
            print(key)
        sys.stdout.flush()
    except BrokenPipeError:
        # `turnout kv keys | head` closing the pipe early has what it wanted; that is no failure.
        # Point stdout at devnull so the interpreter's final flush does not fail again on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


_ACTIONS: dict[str, Callable[[SyncClient, argparse.Namespace], int]] = {
    "get": _get, "set": _set, "has": _has, "del": _del, "keys": _keys,
}
