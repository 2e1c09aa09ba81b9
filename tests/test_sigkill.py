"""A real writer process killed with SIGKILL: every acknowledged event is there on reopen,
with either durability (``"os"`` writes reach the page cache before their append returns,
and the page cache outlives the process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import aioeventstore as es

WRITER = Path(__file__).with_name("sigkill_writer.py")
ROOT = Path(__file__).parent.parent


def run_and_kill(
    store: Path, round_no: int, acks_before_kill: int, durability: str = "fsync"
) -> list[tuple[str, int, str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    acks: list[tuple[str, int, str]] = []
    with subprocess.Popen(
        [sys.executable, str(WRITER), str(store), str(round_no), durability],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "ready"
            for line in proc.stdout:
                _, stream, version, eid = line.split()
                acks.append((stream, int(version), eid))
                if len(acks) >= acks_before_kill:
                    break
            os.kill(proc.pid, signal.SIGKILL)
            # lines the writer printed before it died were acknowledged too
            for line in proc.stdout:
                parts = line.split()
                if len(parts) == 4:
                    acks.append((parts[1], int(parts[2]), parts[3]))
        finally:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return acks


@pytest.mark.parametrize("durability", ["fsync", "os"])
async def test_every_acknowledged_event_survives_sigkill(store_path: Path, durability: str) -> None:
    total = 0
    for round_no, kill_after in enumerate((50, 400, 1500, 3000)):
        acks = run_and_kill(store_path, round_no, kill_after, durability)
        assert len(acks) >= kill_after
        async with es.EventStore(store_path) as store:
            found = {}
            async for rec in store.read_all():
                found[(rec.stream, rec.version)] = rec.id
            assert [r.position async for r in store.read_all()] == list(range(store.head + 1))
            for stream, version, eid in acks:
                assert found.get((stream, version)) == uuid.UUID(eid), (stream, version)
            # appends are all or nothing: every stream holds whole pairs
            for stream in {s for s, _ in found}:
                n = sum(1 for s, _ in found if s == stream)
                assert n % 2 == 0
            total = store.head + 1
    assert total > 0
