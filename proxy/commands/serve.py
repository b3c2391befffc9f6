"""`turnout serve`: run the proxy until SIGTERM."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from proxy.app import serve
from proxy.config import config_path, load_config


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="run the proxy", description="Serve the KeyValue API until SIGTERM."
    )
    parser.add_argument("--config", help="server config (default config/turnout.yaml or $TURNOUT_CONFIG)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(load_config(config_path(args.config)))
    return 0
