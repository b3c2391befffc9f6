"""`turnout kv get|set|has|del|keys`: the KeyValue API from a shell, built on the Python client."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from turnout.client import KeyNotFound, SyncClient, TurnoutError

from proxy.commands.common import add_config_argument, add_json_argument, emit, kv_target, load


def register(subparsers: Any) -> None:
    kv = subparsers.add_parser("kv", help="get, set, has, del and list keys through a running proxy")
    actions = kv.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in [("get", "print a key's document (exit 1 when absent)"),
                            ("set", "store a JSON document ('-' reads it from stdin)"),
                            ("has", "exit 0 when the key is present, 1 when absent"),
                            ("del", "delete a key"),
                            ("keys", "list keys with a prefix")]:
        parser = actions.add_parser(name, help=help_text)
        if name == "keys":
            parser.add_argument("prefix", nargs="?", default="")
        else:
            parser.add_argument("key")
        if name == "set":
            parser.add_argument("value", help="JSON text, or - for stdin")
        parser.add_argument("--target", help="proxy address (default: listen from the config)")
        parser.add_argument("--user", help="caller name sent as x-turnout-user")
        parser.add_argument("--timeout", type=float, default=5.0, help="deadline per call, seconds")
        add_config_argument(parser)
        add_json_argument(parser)
        parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = args.target or kv_target(load(args))
    try:
        with SyncClient(target, user=args.user, timeout=args.timeout) as client:
            return _ACTIONS[args.action](client, args)
    except TurnoutError as exc:
        print(f"turnout kv {args.action}: {exc}", file=sys.stderr)
        return 2


def _get(client: SyncClient, args: argparse.Namespace) -> int:
    try:
        value = client.get(args.key)
    except KeyNotFound:
        emit(args, {"key": args.key, "found": False}, "")
        if not args.json:
            print(f"{args.key}: not found", file=sys.stderr)
        return 1
    emit(args, {"key": args.key, "found": True, "value": value}, json.dumps(value, ensure_ascii=False))
    return 0


def _set(client: SyncClient, args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.value == "-" else args.value
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
    else:
        for key in keys:
            print(key)
    return 0


_ACTIONS = {"get": _get, "set": _set, "has": _has, "del": _del, "keys": _keys}
