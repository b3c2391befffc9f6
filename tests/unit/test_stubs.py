"""The committed stubs are what scripts/gen_protos.py makes from proto/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT

CLIENT = ROOT / "clients" / "python"


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    """Regenerating the stubs changes no committed file and adds none: run scripts/gen_protos.py if this fails."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*_pb2*.py*")}
    committed = {p.relative_to(CLIENT): p.read_bytes() for p in CLIENT.joinpath("turnout").rglob("*_pb2*.py*")}
    assert fresh, "the generator wrote nothing"
    stale = sorted(str(path) for path in fresh.keys() | committed.keys() if fresh.get(path) != committed.get(path))
    assert stale == []


def test_contract_proto_is_the_one_served() -> None:
    """The KeyValue service in the stubs has exactly the contract's five methods."""
    from turnout.kv.v1 import kv_pb2

    service = kv_pb2.DESCRIPTOR.services_by_name["KeyValue"]
    assert service.full_name == "turnout.kv.v1.KeyValue"
    assert [m.name for m in service.methods] == ["Get", "Set", "Has", "Delete", "Keys"]
    assert service.methods_by_name["Keys"].server_streaming
