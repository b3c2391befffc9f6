"""What several subcommands share: finding the config and the running proxy, printing results."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from proxy.config import Config, config_path, load_config


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="server config (default config/turnout.yaml or $TURNOUT_CONFIG)")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a machine-readable result")


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def load(args: argparse.Namespace) -> Config:
    return load_config(config_path(args.config))


def emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    """Print result as JSON with --json, else the human text."""
    if getattr(args, "json", False):
        json.dump(result, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    elif text:
        print(text)
