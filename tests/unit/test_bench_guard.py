"""bench/guard.py runs with tiny sizes, so it cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT


def test_the_guard_benchmark_times_evaluations_against_a_hot_path_record(tmp_path: Path) -> None:
    out = tmp_path / "guard.json"
    finished = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "guard.py"), "--pairs", "4", "--records", "20", "--workers", "1,2",
         "--evaluations", "5", "--calls", "1000", "--rounds", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert finished.returncode == 0, finished.stderr
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "guard"
    baseline, *evaluations = doc["figures"]
    assert baseline["case"] == "Metrics.backend_call (baseline)"
    assert baseline["ratio"] is None
    assert [f["case"] for f in evaluations] == ["evaluation, 1 worker, 4 pairs", "evaluation, 2 workers, 4 pairs"]
    for figure in evaluations:
        assert figure["unit"] == "µs"
        assert figure["value"] > 0
        assert figure["ratio"] == pytest.approx(figure["value"] / baseline["value"])
        # µs per evaluation at one evaluation per second: a millionth of a second, in per cent.
        assert figure["extra"]["core_percent_at_one_per_second"] == pytest.approx(figure["value"] / 1e4)
        assert f"{figure['case']}: " in finished.stdout
    assert "% of one core at one evaluation per second" in finished.stdout


def test_a_bad_worker_list_is_a_usage_error() -> None:
    finished = subprocess.run([sys.executable, str(ROOT / "bench" / "guard.py"), "--workers", "one"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert finished.returncode == 2
    assert "--workers" in finished.stderr
