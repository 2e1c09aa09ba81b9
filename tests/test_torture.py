"""A bounded run of the SIGKILL torture (tests/torture.py; ``make soak`` runs it for longer)."""

from __future__ import annotations

import io
from pathlib import Path

from tests.torture import torture


async def test_sigkill_torture_loses_no_acknowledged_event(tmp_path: Path) -> None:
    out = io.StringIO()
    summary = await torture(tmp_path, seconds=15, seed=20261127, max_events=40_000, out=out)
    assert summary.events_lost == 0
    assert summary.rounds >= 8, out.getvalue()
    assert summary.events_acked > 5_000, out.getvalue()
    assert out.getvalue().count("\n") == summary.rounds
