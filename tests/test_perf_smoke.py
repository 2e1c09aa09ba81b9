"""perf/bench_append.py and its bare group-commit loop run, report what they claim, and clean up.

No speed is asserted anywhere: only that every system runs and the output has its shape.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crc32c
import pytest

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "perf"))

from _bare import BareLog  # noqa: E402

BENCH = str(ROOT / "perf" / "bench_append.py")
TINY = ["--seconds", "0.2", "--warmup", "0.05", "--producers", "1,8"]
TINY += ["--batch-producers", "2", "--batch-size", "10"]


def run_perf(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a perf/ script to its end (CalledProcessError if it fails), its output as text."""
    return subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=120, check=True
    )


def read_frames(path: Path) -> list[bytes]:
    data = path.read_bytes()
    frames, at = [], 0
    while at < len(data):
        length, crc = struct.unpack_from("<II", data, at)
        body = data[at + 8 : at + 8 + length]
        assert len(body) == length and crc32c.crc32c(body) == crc, f"bad frame at {at}"
        frames.append(body)
        at += 8 + length
    return frames


async def test_bare_log_writes_every_record_framed_in_group_commits(tmp_path: Path) -> None:
    path = tmp_path / "bare.log"
    async with BareLog(str(path)) as log:

        async def producer(p: int) -> None:
            for i in range(5):
                await log.append(f"p{p}-{i}".encode())

        await asyncio.gather(*(producer(p) for p in range(20)))
        assert log.appends == 100
        assert 1 <= log.batches < 100  # 20 producers at once: appends shared a sync
    frames = read_frames(path)
    assert sorted(frames) == sorted(f"p{p}-{i}".encode() for p in range(20) for i in range(5))
    # each producer's appends are in its own order
    for p in range(20):
        mine = [f for f in frames if f.startswith(f"p{p}-".encode())]
        assert mine == [f"p{p}-{i}".encode() for i in range(5)]


def test_bench_append_json_has_every_row_and_ratio(tmp_path: Path) -> None:
    out = run_perf(BENCH, "--only", "ours,bare", "--json", *TINY, "--dir", str(tmp_path))
    doc = json.loads(out.stdout)
    assert {"cpus", "cpu_model", "kernel", "python", "loop", "versions"} <= doc["machine"].keys()
    assert doc["machine"]["loop"] == "asyncio"
    assert doc["workload"]["systems"] == ["ours", "bare"]
    rows = {(r["system"], r["producers"], r["events_per_append"]): r for r in doc["rows"]}
    expected = {(s, p, 1) for s in ("ours", "bare") for p in (1, 8)}
    expected |= {("ours", 2, 10), ("bare", 2, 10)}
    assert set(rows) == expected
    for row in rows.values():
        assert row["appends"] > 0 and row["events"] == row["appends"] * row["events_per_append"]
        assert row["events_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["events_per_fsync"] >= 1
        assert row["loop_cpu_us_per_append"] > 0
    ratios = {(r["producers"], r["events_per_append"]): r for r in doc["ratios"]}
    assert set(ratios) == {(1, 1), (8, 1), (2, 10)}
    assert all(r["ours_over_bare"] > 0 for r in ratios.values())
    assert "P=8" in out.stderr  # progress goes to stderr, so stdout is only the JSON
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A temp dir that an unprivileged PostgreSQL server user can enter (pytest's tmp_path
    is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="perf-smoke-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_bench_append_runs_every_peer_and_cleans_up(reachable_dir: Path) -> None:
    out = run_perf(BENCH, *TINY, "--dir", str(reachable_dir))
    for peer in ("bare", "file"):
        assert f"ours/{peer}" in out.stdout
    # the client-server peers run where their client (the `bench` extra) and, for
    # PostgreSQL, its binaries are; otherwise the header says why they were skipped
    if importlib.util.find_spec("aiosqlite") is not None:
        assert "ours/sqlite" in out.stdout
    else:
        assert "sqlite skipped" in out.stdout
    have_postgres = importlib.util.find_spec("asyncpg") is not None and all(
        shutil.which(b) is not None for b in ("initdb", "postgres")
    )
    if have_postgres:
        notes = [line for line in out.stdout.splitlines() if line.startswith("# note")]
        assert "ours/postgres" in out.stdout, notes
    else:
        assert "postgres skipped" in out.stdout
    assert "CPUs" in out.stdout and "loop asyncio" in out.stdout
    assert "10 events per append" in out.stdout and "ours / bare" in out.stdout
    # the throwaway server's directory and every row's store are gone
    assert os.listdir(reachable_dir) == []


def test_bench_subscribe_catchup_rounds_report_each_round_and_the_spread(tmp_path: Path) -> None:
    args = ["--catchup-only", "--catchup-events", "2000", "--rounds", "2", "--json"]
    out = run_perf(str(ROOT / "perf" / "bench_subscribe.py"), *args, "--dir", str(tmp_path))
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    modes = ("subscribe", "read_all", "read_all-raw", "read_stream", "read_stream-alone")
    rounds = {(r["test"], r["events_per_append"], r["round"]): r for r in lines if "round" in r}
    assert set(rounds) == {(f"catchup-{m}", p, n) for m in modes for p in (1, 100) for n in (1, 2)}
    assert all(r["events"] == 2000 and r["events_per_s"] > 0 for r in rounds.values())
    spread = {(r["test"], r["events_per_append"]): r for r in lines if "rounds" in r}
    assert set(spread) == {(f"catchup-{m}-spread", p) for m in modes for p in (1, 100)}
    for (test, per_append), row in spread.items():
        rates = sorted(
            rounds[(test[: -len("-spread")], per_append, n)]["events_per_s"] for n in (1, 2)
        )
        assert row["rounds"] == 2
        assert (row["min_events_per_s"], row["max_events_per_s"]) == (rates[0], rates[1])
        assert row["median_events_per_s"] == (rates[0] + rates[1]) / 2
    assert list(tmp_path.iterdir()) == []


def test_bench_load_reports_every_system_and_length_and_cleans_up(tmp_path: Path) -> None:
    args = ["--streams", "30", "--events", "2,5", "--rounds", "2", "--json"]
    out = run_perf(str(ROOT / "perf" / "bench_load.py"), *args, "--dir", str(tmp_path))
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    rows = {(r["system"], r["events_per_stream"]): r for r in lines if r["test"] == "load"}
    assert set(rows) == {(s, n) for s in ("ours", "sqlite", "sqlite-sync") for n in (2, 5)}
    for (system, n), row in rows.items():
        assert row["streams"] == 30 and row["rounds"] == 2
        assert row["min_loads_per_s"] <= row["loads_per_s"] <= row["max_loads_per_s"]
        assert row["events_per_s"] == pytest.approx(row["loads_per_s"] * n)
        assert 0 < row["p50_us"] <= row["p99_us"]
        if system != "ours":
            assert row["ours_over"] == pytest.approx(
                rows[("ours", n)]["loads_per_s"] / row["loads_per_s"]
            )
    assert list(tmp_path.iterdir()) == []


def test_bench_busy_reports_every_row_against_appends_alone(tmp_path: Path) -> None:
    out = run_perf(
        str(ROOT / "perf" / "bench_busy.py"),
        *("--seconds", "0.2", "--streams", "200", "--json", "--dir", str(tmp_path)),
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    busy = ["none", "cpu-20", "cpu-80", "cpu-300"]
    want = [(s, b) for b in busy for s in ("ours", "bare")]
    want += [("ours", "loads"), ("ours", "replay")]
    assert [(r["system"], r["busy"]) for r in rows] == want
    for row in rows:
        assert row["appends_per_s"] >= 0 and row["busy_work_per_s"] >= 0
        if row["busy"] == "none":
            assert row["ratio_to_alone"] == 1.0 and row["appends_per_s"] > 0
        else:
            assert row["busy_work_per_s"] > 0
    assert list(tmp_path.iterdir()) == []


def test_bench_reopen_reports_the_size_each_round_opened(tmp_path: Path) -> None:
    args = ["--events", "2000", "--rounds", "2", "--seconds", "0.1", "--dir", str(tmp_path)]
    out = run_perf(str(ROOT / "perf" / "bench_reopen.py"), *args)
    sizes = [
        int(line.split("; ")[1].split("-event store")[0].replace(",", ""))
        for line in out.stdout.splitlines()
        if line.startswith("round ")
    ]
    # each child appends into the big store: the second round opens a bigger one
    assert len(sizes) == 2 and sizes[0] == 2000 and sizes[1] > 2000
    assert list(tmp_path.iterdir()) == []


def test_bench_scavenge_counts_the_survivors_with_odd_streams() -> None:
    args = ["--streams", "7", "--events", "30", "--segment-bytes", "4096", "--json"]
    row = json.loads(run_perf(str(ROOT / "perf" / "bench_scavenge.py"), *args).stdout)
    assert row["survivors"] == 3 * 30 and row["events_removed"] == 4 * 30


def test_bench_schema_only_prints_no_ratio_without_its_baseline() -> None:
    bench = str(ROOT / "perf" / "bench_schema.py")

    def rows(*only: str) -> list[dict[str, Any]]:
        out = run_perf(bench, "--events", "300", "--repeat", "1", "--json", *only).stdout
        return [json.loads(line) for line in out.splitlines() if line]

    without = rows("--only", "v2")  # "v2 current" and "v1 → v2 upcast": no "v1 current"
    assert without and all(r["ratio"] is None and r["cpu_ratio"] is None for r in without)
    full = rows()
    assert full[0]["case"] == "v1 current" and full[0]["ratio"] == 1.0
