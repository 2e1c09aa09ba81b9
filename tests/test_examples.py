"""The example programs run and check themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def run_script(script: str, *args: str, timeout: float = 120) -> str:
    """Run ``ROOT/script`` with this interpreter; its stdout (fails on a non-zero exit)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return out.stdout


def test_agents_demo_runs_and_verifies_its_replay(tmp_path: Path) -> None:
    out = run_script(
        "examples/agents.py", "--agents", "40", "--rounds", "10", "--dir", str(tmp_path / "store")
    )
    assert "every balance and board matches" in out
    assert "events per fsync" in out
    assert str(tmp_path / "store") in out


def test_projection_example_resumes_and_matches_a_replay(tmp_path: Path) -> None:
    out = run_script("examples/projection.py", "--dir", str(tmp_path))
    assert "balances match a full replay" in out
    assert "resumed and caught up" in out


def test_bench_subscribe_runs(tmp_path: Path) -> None:
    out = run_script(
        "perf/bench_subscribe.py",
        "--seconds",
        "0.2",
        "--producers",
        "16",
        "--catchup-events",
        "2000",
        "--dir",
        str(tmp_path),
        timeout=240,
    )
    assert "catchup-subscribe" in out and "ratio to 0" in out


def test_bench_subscribe_catchup_only(tmp_path: Path) -> None:
    out = run_script(
        "perf/bench_subscribe.py",
        "--catchup-only",
        "--catchup-events",
        "2000",
        "--dir",
        str(tmp_path),
        timeout=240,
    )
    assert "catchup-read_all-raw" in out and "catchup-read_stream" in out
    assert "ratio to 0" not in out and "p50" not in out


def test_bench_scale_runs(tmp_path: Path) -> None:
    out = run_script(
        "perf/bench_scale.py", "--steps", "2000,3000", "--appends", "2000", "--dir", str(tmp_path)
    )
    assert "index B/event" in out and "events in store at open" in out
    # 2,000 events + 2,000 measured appends: the store is past the second step already
    assert "4,000 events at open (already past step 3,000: not grown)" in out
    assert list(tmp_path.iterdir()) == []


def test_bench_scale_rows_count_the_events_at_open(tmp_path: Path) -> None:
    args = ["--steps", "2000,3000,7000", "--appends", "2000", "--json", "--dir", str(tmp_path)]
    out = run_script("perf/bench_scale.py", *args)
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    got = [(r["step"], r["events"], r["events_after"], r["grow_s"] is None) for r in rows]
    assert got == [(2000, 2000, 4000, False), (3000, 4000, 6000, True), (7000, 7000, 9000, False)]


def test_bench_scale_streams_curve_runs(tmp_path: Path) -> None:
    out = run_script(
        "perf/bench_scale.py",
        "--streams-curve",
        "10,3000",
        "--curve-events",
        "6000",
        "--appends",
        "2000",
        "--dir",
        str(tmp_path),
        "--json",
    )
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [r["streams"] for r in rows] == [10, 3000]
    assert all(r["events"] == 6000 and r["peak_rss_mb"] > 0 for r in rows)
    assert list(tmp_path.iterdir()) == []


def test_bench_append_many_runs() -> None:
    out = run_script(
        "perf/bench_append_many.py", "--seconds", "0.3", "--per-call", "10", "--tasks", "4"
    )
    assert "append_many" in out and "gather" in out


def test_snapshots_example_matches_a_full_replay(tmp_path: Path) -> None:
    out = run_script("examples/snapshots.py", "--events", "1000", "--dir", str(tmp_path / "store"))
    assert "snapshot-based state equals a full replay of 1025 events" in out
    assert "snapshot at version 999 + 25 events" in out


def test_bench_snapshot_runs(tmp_path: Path) -> None:
    out = run_script(
        "perf/bench_snapshot.py",
        "--events",
        "2000",
        "--tail",
        "50",
        "--repeat",
        "1",
        "--dir",
        str(tmp_path),
    )
    assert "full replay / snapshot load =" in out and "snapshot + 50" in out


def test_bench_snapshot_without_dir_leaves_no_temp_dir(tmp_path: Path) -> None:
    args = ["--events", "500", "--tail", "10", "--repeat", "1"]
    subprocess.run(
        [sys.executable, str(ROOT / "perf" / "bench_snapshot.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "script", ["examples/agents.py", "examples/snapshots.py", "perf/bench_snapshot.py"]
)
def test_refuses_a_non_empty_dir(tmp_path: Path, script: str) -> None:
    (tmp_path / "left-over").write_text("a previous run")
    out = subprocess.run(
        [sys.executable, str(ROOT / script), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2 and "not empty" in out.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["left-over"]
