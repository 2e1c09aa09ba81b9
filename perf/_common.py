"""Shared pieces of the perf scripts: the event loop choice, timing, and table printing."""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Callable, Coroutine, Sequence
from typing import Any


def run(main: Coroutine[Any, Any, None], loop: str) -> None:
    """Run ``main`` on the default asyncio loop or on uvloop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """Print rows as an aligned table; columns are (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([format(row[k], f) if row.get(k) is not None else "-" for k, _, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    for n, line in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def emit_json(rows: list[dict[str, Any]]) -> None:
    """One JSON object per line."""
    for row in rows:
        print(json.dumps(row, sort_keys=True))


def median(values: Sequence[float]) -> float:
    """Median, nan for nothing."""
    return statistics.median(values) if values else float("nan")
