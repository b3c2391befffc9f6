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


def load(args: argparse.Namespace) -> Config:
    return load_config(config_path(args.config))


def admin_target(config: Config) -> str:
    """The running proxy's admin address: as configured, or as the proxy wrote it when it chose a port."""
    port = config.admin_listen.rpartition(":")[2]
    if port != "0":
        return config.admin_listen
    written = config.state_dir / "admin.address"
    try:
        return written.read_text().strip()
    except FileNotFoundError:
        return config.admin_listen


def emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    """Print result as JSON with --json, else the human text."""
    if getattr(args, "json", False):
        json.dump(result, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    elif text:
        print(text)
