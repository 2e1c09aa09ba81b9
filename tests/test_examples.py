"""The example programs run and check themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_agents_demo_runs_and_verifies_its_replay(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "agents.py"),
            "--agents",
            "40",
            "--rounds",
            "10",
            "--dir",
            str(tmp_path / "store"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "every balance and board matches" in out.stdout
    assert "events per fsync" in out.stdout
    assert str(tmp_path / "store") in out.stdout


def test_projection_example_resumes_and_matches_a_replay(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "projection.py"), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "balances match a full replay" in out.stdout
    assert "resumed and caught up" in out.stdout


def test_bench_subscribe_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "perf" / "bench_subscribe.py"),
            "--seconds",
            "0.2",
            "--producers",
            "16",
            "--catchup-events",
            "2000",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    assert "catchup-subscribe" in out.stdout and "ratio to 0" in out.stdout


def test_bench_scale_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "perf" / "bench_scale.py"),
            "--steps",
            "2000,5000",
            "--appends",
            "2000",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "index B/event" in out.stdout


def test_bench_scale_streams_curve_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "perf" / "bench_scale.py"),
            "--streams-curve",
            "10,3000",
            "--curve-events",
            "6000",
            "--appends",
            "2000",
            "--dir",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert [r["streams"] for r in rows] == [10, 3000]


def test_bench_append_many_runs() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "perf" / "bench_append_many.py"),
            "--seconds",
            "0.3",
            "--per-call",
            "10",
            "--tasks",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "append_many" in out.stdout and "gather" in out.stdout


def test_snapshots_example_matches_a_full_replay(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "snapshots.py"),
            "--events",
            "1000",
            "--dir",
            str(tmp_path / "store"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "snapshot-based state equals a full replay of 1025 events" in out.stdout
    assert "snapshot at version 999 + 25 events" in out.stdout


def test_bench_snapshot_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "perf" / "bench_snapshot.py"),
            "--events",
            "2000",
            "--tail",
            "50",
            "--repeat",
            "1",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "full replay / snapshot load =" in out.stdout and "snapshot + 50" in out.stdout
