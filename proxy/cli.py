"""The `turnout` command line: one subcommand per module in proxy/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from proxy.errors import TurnoutError

#: Each module has `register(subparsers)`, which adds its parser(s) with `func=run(args) -> int`.
COMMAND_MODULES = (
    "proxy.commands.serve",
    "proxy.commands.kv",
    "proxy.commands.flags",
    "proxy.commands.operate",
    "proxy.commands.discrepancies",
    "proxy.commands.migration",
    "proxy.commands.cutover",
    "proxy.commands.safety",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnout",
        description="A gRPC proxy that moves a key-value store from legacy JSON files to a new store.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except TurnoutError as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
