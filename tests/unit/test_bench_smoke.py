"""The benchmark harness runs one tiny case end to end, so it cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cases import CASES, SERVERS, with_baselines
from bench.load import grpc_frame, percentile
from bench.pyspy import top_frames
from tests.support.paths import ROOT

REPO = ROOT


def test_the_floor_get_case_runs_end_to_end_with_the_python_client(tmp_path: Path) -> None:
    """bench/run.py starts the floor, loads it with real calls, stops it and writes figures as JSON."""
    out = tmp_path / "bench.json"
    finished = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--cases", "floor-get", "--duration", "0.5",
         "--warmup", "0.2", "--load", "python", "--processes", "1", "--keys", "10", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert finished.returncode == 0, finished.stderr
    doc = json.loads(out.read_text())
    (case,) = doc["cases"]
    assert case["case"] == "floor-get"
    assert case["load"]["requests"] > 0
    assert case["load"]["errors"] == 0
    assert case["load"]["p50_ms"] <= case["load"]["p99_ms"]
    assert "floor-get" in finished.stdout


def test_every_case_names_a_known_server_and_an_earlier_baseline() -> None:
    """Each case's server exists and its baseline runs before it, so ratios are always computable."""
    servers = {server.name for server in SERVERS}
    seen: set[str] = set()
    for case in CASES:
        assert case.server in servers
        assert case.baseline is None or case.baseline in seen
        seen.add(case.name)


def test_asking_for_a_case_brings_its_baselines_first() -> None:
    """Selecting the half-peak case also runs the proxy's peak and the floor it is read against."""
    names = [case.name for case in with_baselines(["proxy-memory-get-half-peak"])]
    assert names == ["floor-get", "proxy-memory-get", "proxy-memory-get-half-peak"]


def test_a_grpc_frame_is_an_uncompressed_flag_and_a_big_endian_length() -> None:
    """The body h2load posts is the 5-byte gRPC message header followed by the message."""
    assert grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


@pytest.mark.parametrize(("fraction", "expected"), [(0.5, 50.0), (0.99, 99.0), (1.0, 100.0)])
def test_percentiles_pick_the_nearest_rank(fraction: float, expected: float) -> None:
    """A percentile of 1..100 is the value at its nearest rank."""
    assert percentile([float(i) for i in range(1, 101)], fraction) == expected


def test_top_frames_count_own_and_inclusive_samples() -> None:
    """A frame's own share counts the stacks it ends; its inclusive share every stack it is in."""
    own, inclusive = top_frames("main;get 3\nmain;set 1\n")
    assert (own[0].frame, own[0].share) == ("get", 0.75)
    assert (inclusive[0].frame, inclusive[0].share) == ("main", 1.0)


def test_the_dispatcher_benchmark_runs_and_reads_each_mode_against_route_old(tmp_path: Path) -> None:
    """bench/dispatcher.py runs every mode on real stores and writes each ratio to route old."""
    out = tmp_path / "dispatcher.json"
    finished = subprocess.run(
        [sys.executable, str(REPO / "bench" / "dispatcher.py"), "--calls", "320", "--rounds", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert finished.returncode == 0, finished.stderr
    figures = json.loads(out.read_text())["figures"]
    assert len(figures) == 12
    for figure in figures:
        assert figure["value"] > 0
        assert (figure["ratio"] is None) == figure["case"].endswith("route old")


def test_the_server_migration_benchmark_migrates_and_verifies_into_postgres_and_redis(tmp_path: Path) -> None:
    """bench/migrate_servers.py loads a small legacy file raw, migrates it and verifies it clean on a real
    PostgreSQL and a real redis-server, and reads each migrate rate against its raw load."""
    out = tmp_path / "migrate_servers.json"
    finished = subprocess.run(
        [sys.executable, str(REPO / "bench" / "migrate_servers.py"), "--keys", "3000", "--batch-size", "500",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )
    assert finished.returncode == 0, finished.stderr
    figures = {(f["case"], f["baseline"]): f for f in json.loads(out.read_text())["figures"]}
    assert len(figures) == 14  # 4 raw loads, migrate and migrate --read-back against each, 2 verifies
    for figure in figures.values():
        assert figure["value"] > 0
    assert figures[("turnout migrate jsonfile -> postgres", "raw psycopg COPY into the table")]["ratio"] > 0
    assert figures[("turnout migrate --read-back jsonfile -> redis", "raw redis-py pipelined MSET x500")]["ratio"] > 0
    assert figures[("turnout migrate jsonfile -> redis", "raw redis-py pipelined MSET x500")]["ratio"] > 0
    assert figures[("turnout verify jsonfile vs redis", "target 100k keys/s")]["target"] == 1.0


def test_the_server_store_benchmark_loads_a_proxy_over_each_store_and_times_direct_calls(tmp_path: Path) -> None:
    """bench/server_stores.py starts PostgreSQL, redis-server, an upstream and a proxy over each, loads
    Get and Set without errors, and gives each store's added p50 against its own client."""
    out = tmp_path / "server_stores.json"
    finished = subprocess.run(
        [sys.executable, str(REPO / "bench" / "server_stores.py"), "--duration", "0.3", "--warmup", "0.2",
         "--calls", "20", "--load", "python", "--processes", "1", "--connections", "1", "--streams", "4",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )
    assert finished.returncode == 0, finished.stderr
    figures = {f["case"]: f for f in json.loads(out.read_text())["figures"]}
    for store in ("postgres", "redis", "grpc"):
        for op in ("Get", "Set"):
            loaded = figures[f"proxy over {store} {op}"]
            assert loaded["value"] > 0
            assert loaded["extra"]["errors"] == 0
            assert loaded["baseline"] == f"proxy over memory {op}"
            sequential = figures[f"sequential {op}: proxy over {store} p50"]
            assert sequential["baseline"] == f"direct {store}"
            assert sequential["extra"]["added_us"] == sequential["value"] - figures[f"sequential {op}: direct {store} p50"]["value"]


def test_the_handler_benchmark_reads_the_proxy_path_against_the_floor_handler(tmp_path: Path) -> None:
    """bench/handlers.py times the proxy's per-call Python path and the floor's handler, Set and Get."""
    out = tmp_path / "handlers.json"
    finished = subprocess.run(
        [sys.executable, str(REPO / "bench" / "handlers.py"), "--calls", "200", "--rounds", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert finished.returncode == 0, finished.stderr
    figures = {f["case"]: f for f in json.loads(out.read_text())["figures"]}
    assert set(figures) == {"floor Set", "proxy Set", "floor Get", "proxy Get"}
    assert figures["proxy Set"]["baseline"] == "floor Set"
    assert all(f["value"] > 0 for f in figures.values())
