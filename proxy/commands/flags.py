"""`turnout check-flags FILE` and `turnout route KEY`: what a flag file says, before and after deploying it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import grpc
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc

from proxy.commands.common import add_config_argument, add_json_argument, emit, load
from proxy.control.adminclient import admin_channel, admin_target
from proxy.errors import BackendUnavailable, ConfigError
from proxy.routing.flagfile import load_flags
from proxy.routing.router import Op, Router, explain


def register(subparsers: Any) -> None:
    check = subparsers.add_parser("check-flags", help="validate a flag file (exit 1 when invalid)")
    check.add_argument("file", type=Path)
    add_json_argument(check)
    check.set_defaults(func=check_flags)

    route = subparsers.add_parser("route", help="which backend an operation on KEY goes to, and why")
    route.add_argument("key")
    route.add_argument("--user", help="the caller (x-turnout-user)")
    route.add_argument("--op", choices=[op.value for op in Op], default="get")
    route.add_argument("--flags", type=Path, help="explain under this flag file instead of asking the running proxy")
    add_config_argument(route)
    add_json_argument(route)
    route.set_defaults(func=explain_route)


def check_flags(args: argparse.Namespace) -> int:
    try:
        flags = load_flags(args.file).flags
    except ConfigError as exc:
        emit(args, {"file": str(args.file), "valid": False, "error": str(exc)}, "")
        if not args.json:
            print(exc, file=sys.stderr)
        return 1
    emit(args, {"file": str(args.file), "valid": True, "revision": flags.revision, "flags": flags.to_document()},
         f"{args.file}: valid (revision {flags.revision!r})")
    return 0


def explain_route(args: argparse.Namespace) -> int:
    """Ask the running proxy, so that overrides count; with --flags, or when no proxy answers, read the
    flag file (the config's `flags`, or the one given) and route under it with no override."""
    result: dict[str, Any] | None = None
    if args.flags is None:
        config = load(args)
        try:
            result = _ask_proxy(admin_channel(config), args)
            source = "the running proxy"
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                # A proxy answered: the flag file's route could differ from what it does (an override).
                raise BackendUnavailable(f"the admin API at {admin_target(config)} refused the call: "
                                         f"{exc.details()}") from None
            flags_file = config.flags
            source = f"{flags_file} (no proxy answered at {admin_target(config)})"
    else:
        flags_file = args.flags
        source = str(flags_file)
    if result is None:
        result = explain(Router(load_flags(flags_file).flags), Op(args.op), args.key, args.user)
    result = {"key": args.key, "op": args.op, "user": args.user, **result, "source": source}
    emit(args, result, f"{args.op} {args.key!r} -> {result['route']} (reason {result['reason']}, bucket "
                       f"{result['bucket']}, flags revision {result['flags_revision']!r}; from {source})")
    return 0


def _ask_proxy(channel: grpc.Channel, args: argparse.Namespace) -> dict[str, Any]:
    """The running proxy's answer (admin API Route): its flags in force and any override."""
    with channel:
        reply = admin_pb2_grpc.AdminStub(channel).Route(
            admin_pb2.RouteRequest(key=args.key, user=args.user or "", op=args.op), timeout=3)
    return {"route": reply.route, "reason": reply.reason, "bucket": reply.bucket,
            "flags_revision": reply.flags_revision, "shadow": reply.shadow, "secondary": reply.secondary}
