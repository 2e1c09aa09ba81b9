"""Appends and open time on a big store, each in a fresh process: what a restarted service sees.

``bench_scale.py`` measures each size inside the process that grew the store (its heap, page
cache and allocator state included). This script grows one store of ``--events`` events
(default 10,000,000; ``bench_scale.grow``: single-event appends over 1,000 streams with
``durability="os"``), then, alternating, starts a fresh Python process that opens it and
measures durable single-event appends at P=1024 (``bench_append.py``'s workload: 0.5 s
warm-up, ``--seconds`` measured), and one that does the same on an empty store, in turns
(empty first in odd rounds, big first in even ones). It prints the open time, each rate, the
ratio of the big store's rate to the empty store's, and the mean ratio. Each process's
warm-up and measured appends go into the big store too (as a restarted service's would), so
each round opens a bigger store than the round before (the first, ``--events`` events); each
round's line gives the event count the big store had when it was opened.

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
from bench_scale import grow

import aioeventstore as es

STREAMS = 1_000
NAMES = [f"s-{k}" for k in range(STREAMS)]  # the streams bench_scale.grow appends to


async def measure(directory: str, seconds: float) -> dict[str, float | int]:
    """In this (fresh) process: open ``directory``, then P=1024 durable appends; the open
    time, the event count at open and the append rate."""
    started = time.perf_counter()
    async with es.EventStore(directory) as store:
        opened = time.perf_counter() - started
        at_open = store.head + 1
        singles = [b.make_event(k) for k in range(STREAMS)]

        async def append(p: int, i: int) -> None:
            k = i % STREAMS
            await store.append(NAMES[k], singles[k])

        await b.drive(append, 1024, 0.5, 1)
        row = await b.drive(append, 1024, seconds, 1)
    return {"open_s": opened, "events": at_open, "events_per_s": row["events_per_s"]}


def child(directory: str, seconds: float) -> dict[str, float | int]:
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
        asyncio.run(grow(big, 0, args.events, STREAMS, 1))
        # grown with durability="os": gigabytes the kernel has yet to write back, whose
        # writeback would otherwise compete with the measured fsyncs and reads
        os.sync()
        print(f"grew {args.events:,} events in {time.perf_counter() - started:.1f} s")
        ratios: list[float] = []
        for r in range(args.rounds):
            empty = os.path.join(top, f"empty-{r}")
            # the order alternates (empty first, then big first): whatever drifts on the
            # machine over a round (caches, writeback, clock) favours neither store
            if r % 2 == 0:
                e = child(empty, args.seconds)
                g = child(big, args.seconds)
            else:
                g = child(big, args.seconds)
                e = child(empty, args.seconds)
            ratio = g["events_per_s"] / e["events_per_s"]
            ratios.append(ratio)
            first = "empty" if r % 2 == 0 else "big"
            print(
                f"round {r + 1} ({first} first): empty store {e['events_per_s']:,.0f} appends/s; "
                f"{int(g['events']):,}-event store opened in {g['open_s']:.2f} s, "
                f"{g['events_per_s']:,.0f} appends/s ({ratio:.2f} of the empty store's)",
                flush=True,
            )
        print(
            f"mean ratio over {len(ratios)} rounds: {sum(ratios) / len(ratios):.2f} "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
        )
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
