"""Appends and open time on a big store, each in a fresh process: what a restarted service sees.

``bench_scale.py`` measures each size inside the process that grew the store (its heap, page
cache and allocator state included). This script grows one store of ``--events`` events
(default 10,000,000; single-event appends over 1,000 streams with ``durability="os"``, as
bench_scale does), then, alternating, starts a fresh Python process that opens it and
measures durable single-event appends at P=1024 (``bench_append.py``'s workload: 0.5 s
warm-up, ``--seconds`` measured), and one that does the same on an empty store. It prints
the open time, each rate, and the ratio of the big store's rate to the empty store's.

    python perf/bench_reopen.py [--events 10000000] [--rounds 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_append as b

import aioeventstore as es


async def grow(directory: str, events: int) -> None:
    """``events`` single-event appends over the benchmark's 1,000 streams."""
    async with es.EventStore(directory, durability="os") as store:
        singles = [b.make_event(k) for k in range(b.STREAMS)]
        step = 100_000
        for start in range(0, events, step):
            end = min(events, start + step)
            await store.append_many(
                [(b.NAMES[i % b.STREAMS], singles[i % b.STREAMS]) for i in range(start, end)]
            )
            print(f"  grown to {end:,} events", file=sys.stderr, flush=True)


async def measure(directory: str, seconds: float) -> dict[str, float]:
    """In this (fresh) process: open ``directory``, then P=1024 durable appends."""
    started = time.perf_counter()
    async with es.EventStore(directory) as store:
        opened = time.perf_counter() - started
        singles = [b.make_event(k) for k in range(b.STREAMS)]

        async def append(p: int, i: int) -> None:
            k = i % b.STREAMS
            await store.append(b.NAMES[k], singles[k])

        await b.drive(append, 1024, 0.5, 1)
        row = await b.drive(append, 1024, seconds, 1)
    return {"open_s": opened, "events_per_s": row["events_per_s"]}


def child(directory: str, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", directory, "--seconds", str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--dir", default=None, help="where the stores go (a temp dir by default)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(asyncio.run(measure(args.child, args.seconds))))
        return 0
    top = tempfile.mkdtemp(prefix="bench-reopen-", dir=args.dir)
    try:
        big = os.path.join(top, "big")
        started = time.perf_counter()
        asyncio.run(grow(big, args.events))
        print(f"grew {args.events:,} events in {time.perf_counter() - started:.1f} s")
        for r in range(args.rounds):
            empty = os.path.join(top, f"empty-{r}")
            e = child(empty, args.seconds)
            g = child(big, args.seconds)
            ratio = g["events_per_s"] / e["events_per_s"]
            print(
                f"round {r + 1}: empty store {e['events_per_s']:,.0f} appends/s; "
                f"{args.events:,}-event store opened in {g['open_s']:.2f} s, "
                f"{g['events_per_s']:,.0f} appends/s ({ratio:.2f} of the empty store's)",
                flush=True,
            )
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
