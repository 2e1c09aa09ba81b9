"""Bulk appends across streams: ``append_many`` against ``asyncio.gather`` of ``append`` calls.

Workload: ``--tasks`` importer tasks, each repeatedly handing the store ``--per-call``
single-event appends to different streams (≈150-byte events over 1,000 streams, as in
bench_append.py), every append durable before the call returns. Rows:

* gather:      ``await asyncio.gather(*(store.append(s, e) for s, e in batch))``
* append_many: ``await store.append_many(batch)`` (one task, one wait for the whole batch)
* 1024 tasks:  the same events from 1,024 tasks that each ``await store.append`` one event

    python perf/bench_append_many.py [--seconds 3] [--tasks 16] [--per-call 100] [--loop uvloop]

Prints events/s and events per fsync. Asserts nothing: numbers are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_json, print_table, run
from bench_append import NAMES, STREAMS, make_event

import aioeventstore as es


async def measure(kind: str, tasks: int, per_call: int, seconds: float) -> dict[str, Any]:
    events = [make_event(k) for k in range(STREAMS)]
    with tempfile.TemporaryDirectory() as d:
        async with es.EventStore(d) as store:
            count = 0
            stop = 0.0

            def batch(t: int, i: int) -> list[es.AppendSpec]:
                base = (t * 7919 + i * per_call) % STREAMS
                return [
                    (NAMES[(base + j) % STREAMS], events[(base + j) % STREAMS])
                    for j in range(per_call)
                ]

            async def worker(t: int, call: Callable[[int, int], Awaitable[int]]) -> None:
                nonlocal count
                i = 0
                while time.perf_counter() < stop:
                    done = await call(t, i)  # (not count += await ...: that reads count first)
                    count += done
                    i += 1

            async def gathered(t: int, i: int) -> int:
                await asyncio.gather(*(store.append(spec[0], spec[1]) for spec in batch(t, i)))
                return per_call

            async def many(t: int, i: int) -> int:
                await store.append_many(batch(t, i))
                return per_call

            async def single(t: int, i: int) -> int:
                k = (t + i * 1024) % STREAMS
                await store.append(NAMES[k], events[k])
                return 1

            call, n = {"gather": (gathered, tasks), "append_many": (many, tasks)}.get(
                kind, (single, 1024)
            )
            stop = time.perf_counter() + 0.3  # warm-up
            await asyncio.gather(*(worker(t, call) for t in range(n)))
            before = store.statistics()
            count = 0
            t0 = time.perf_counter()
            stop = t0 + seconds
            await asyncio.gather(*(worker(t, call) for t in range(n)))
            elapsed = time.perf_counter() - t0
            after = store.statistics()
    syncs = after.syncs - before.syncs
    return {
        "kind": kind if n == tasks else "1024 tasks, append",
        "tasks": n,
        "per_call": per_call if n == tasks else 1,
        "events_per_s": count / elapsed,
        "events_per_fsync": (after.events - before.events) / syncs if syncs else 0.0,
    }


async def main(args: argparse.Namespace) -> None:
    rows = []
    for kind in ("gather", "append_many", "single"):
        row = await measure(kind, args.tasks, args.per_call, args.seconds)
        rows.append(row)
        if not args.json:
            print(f"  {row['kind']:<20} {row['events_per_s']:>10,.0f} events/s", flush=True)
    if args.json:
        emit_json(rows)
        return
    print()
    print_table(
        rows,
        [
            ("kind", "how", "s"),
            ("tasks", "tasks", "d"),
            ("per_call", "appends per call", "d"),
            ("events_per_s", "events/s", ",.0f"),
            ("events_per_fsync", "events/fsync", ",.0f"),
        ],
    )


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--per-call", type=int, default=100)
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


if __name__ == "__main__":
    arguments = parse()
    run(main(arguments), arguments.loop)
