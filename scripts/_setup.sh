# Sourced by scripts/serve and scripts/test: makes .venv with every dependency, once per change of
# the package metadata, so both README commands work on a fresh machine with Python 3.11.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

pick_python() {
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
      echo "$candidate"
      return
    fi
  done
  echo "turnout needs Python 3.11 or newer on PATH" >&2
  exit 1
}

VENV="$ROOT/.venv"
STAMP="$VENV/.turnout-installed"
# What is installed follows from both packages' metadata and from the commands below.
WANT="$(cat pyproject.toml clients/python/pyproject.toml scripts/_setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  "$(pick_python)" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "setting up $VENV (once) ..." >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  # The server's package holds the client's `turnout` package itself; a turnout-client left by an
  # older setup would be a second owner of the same module.
  if "$VENV/bin/python" -m pip show --quiet turnout-client >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip uninstall --quiet --disable-pip-version-check --yes turnout-client
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
  echo "$WANT" >"$STAMP"
fi
export PATH="$VENV/bin:$PATH"
