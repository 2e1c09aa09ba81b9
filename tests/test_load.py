"""Load without blow-up: 10,000 concurrent producers, some with 1 MiB events, wait for queue
space instead of growing memory; peak memory stays within a bound derived from the options
and does not grow with the bytes written (tests/load_probe.py measures it in its own process).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

MiB = 1 << 20
ROOT = Path(__file__).parent.parent


def test_ten_thousand_producers_wait_and_memory_stays_bounded(tmp_path: Path) -> None:
    store = tmp_path / "store"
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "load_probe.py"), str(store)],
            capture_output=True,
            text=True,
            timeout=110,
            check=True,
        )
    finally:
        shutil.rmtree(store, ignore_errors=True)  # about 830 MB: never leave it behind
    r = json.loads(done.stdout)
    queue, batch, append = r["max_queue_bytes"], r["max_batch_bytes"], r["max_append_bytes"]
    small_producers = r["producers"] - r["big_producers"]
    for p in ("phase1", "phase2"):
        # backpressure: the queue never holds more than its bound, and producers waited
        assert r[p]["max_queued"] == r["producers"]
        assert r[p]["max_queued_bytes"] <= queue
        assert r[p]["max_waiting_at_least"] > 1000
    assert r["head"] == r["events"] - 1 == 2 * (r["big_producers"] * 12 + small_producers * 3) - 1
    assert r["big_read_back"] > MiB - 100
    # What the load may hold at once: the queue; the batch being written (its appends and the
    # joined buffer); every producer's own encoded append while it waits (a big one at most
    # max_append_bytes, a small one with its task about 8 KiB); plus 64 MiB of slack.
    bound = (
        queue
        + 2 * (batch + append)
        + r["big_producers"] * append
        + small_producers * 8 * 1024
        + 64 * MiB
    )
    for peak in (r["peak1"], r["peak2"]):
        assert peak - r["baseline_rss"] <= bound, (peak - r["baseline_rss"]) / MiB
    # and nothing is kept per byte written: 830 MB went to disk
    assert r["bytes_written"] > 800 * MiB
    assert max(r["peak1"], r["peak2"]) - r["baseline_rss"] < r["bytes_written"] / 4
    if r["resettable"]:  # the second, identical phase peaks no higher than the first
        assert r["peak2"] <= r["peak1"] + 32 * MiB
