"""Shared pieces of the perf scripts: the event loop choice, timing, and table printing."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], loop: str) -> T:
    """Run ``main`` on the default asyncio loop or on uvloop; return its result."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


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


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def filesystem_of(path: str) -> str:
    """``"ext4 on /dev/vda (mounted at /)"`` for the mount holding ``path`` (Linux), or ""."""
    path = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                device, mount, fstype = fields[0], fields[1].replace("\\040", " "), fields[2]
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and (best is None or len(mount) >= len(best[1])):
                    best = (device, mount, fstype)
    except OSError:
        return ""
    return f"{best[2]} on {best[0]} (mounted at {best[1]})" if best else ""


def machine_line(info: dict[str, Any]) -> str:
    """A header line for ``machine_info``'s CPUs, CPU, kernel, Python and loop."""
    return (
        f"machine: {info['cpus']} CPUs, {info['cpu_model']}, {info['kernel']}, "
        f"{info['python']}, loop {info['loop']}"
    )


def machine_info(loop: str, directory: str) -> dict[str, Any]:
    """What a reader needs to compare figures: CPUs, kernel, Python, loop, disk, load."""
    loop_name = loop
    if loop == "uvloop":
        from importlib.metadata import version

        loop_name = f"uvloop {version('uvloop')}"
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "loop": loop_name,
        "directory": os.path.realpath(directory),
        "filesystem": filesystem_of(directory),
        "load_average": [round(x, 2) for x in load] if load else None,
    }
