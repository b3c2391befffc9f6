"""`turnout serve`: run the proxy until SIGTERM."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from proxy.config import config_path, load_config


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="run the proxy", description="Serve the KeyValue API until SIGTERM."
    )
    parser.add_argument("--config", help="server config (default config/turnout.yaml or $TURNOUT_CONFIG)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="serve from N processes on one port (SO_REUSEPORT); both stores must be "
                             "ones several processes can share (sqlite, jsondir)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = config_path(args.config)
    config = load_config(path)
    if args.workers != 1:
        from proxy.workers.supervisor import supervise

        return supervise(config, path.absolute(), args.workers, args.log_level)
    from proxy.serving.app import serve  # here: no other command loads the serving plane

    serve(config)
    return 0
