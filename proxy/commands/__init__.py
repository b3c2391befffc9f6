"""Subcommands of `turnout`, one module each (see proxy/cli.py)."""
