"""Turnout: a sidecar gRPC proxy that moves a key-value store from legacy JSON files to a new store."""

__version__ = "0.1.0"
