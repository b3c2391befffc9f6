"""Generate the Python stubs (and their typed .pyi) from proto/ into the client package.

One command regenerates everything: `python scripts/gen_protos.py`. The stubs are committed;
tests/test_stubs.py runs this into a temporary folder and fails when the committed ones differ.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUT = ROOT / "clients" / "python"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi, *_pb2_grpc.py and *_pb2_grpc.pyi for every proto under out_dir."""
    # protoc finds the mypy-protobuf plugins on PATH; they live beside this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    sources = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(p for p in out_dir.joinpath("turnout").rglob("*_pb2*.py*"))
    # protoc writes no package markers; each generated folder needs one to be importable.
    for folder in {p.parent for p in written}:
        marker = folder / "__init__.py"
        while folder != out_dir and not marker.exists():
            marker.write_text("")
            folder = folder.parent
            marker = folder / "__init__.py"
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out = parser.parse_args().out
    for path in generate(out):
        print(path.relative_to(out), file=sys.stderr)


if __name__ == "__main__":
    main()
