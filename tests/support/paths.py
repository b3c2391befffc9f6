"""Where the repository is, for tests that read its shipped files or run its scripts."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
