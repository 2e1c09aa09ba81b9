"""How the store behaves as it grows: open time, durable append rate, index and process memory.

The store is grown in steps (default 10k, 100k, 1M events over ``--streams`` streams; the
growth uses ``--per-append`` events per append (default 1, as in ``bench_append.py``: one
frame and one index row per event) with ``durability="os"`` and 1024 producers). At each step
the store is closed and reopened with the default ``durability="fsync"``, and the script
prints: how long opening took (loading the index sidecars a clean close leaves), how long it
takes without them (every ``.idx`` removed: a full rescan, which also rewrites them), the
durable single-event append rate at P=1024 over ``--appends`` appends, the index's bytes per
event, and the process's peak RSS. A row's "events" is the store's size at open (what the open
times and the append rate start from); the measured appends add to it ("events_after"), and the
next step grows from there (a step the store is already past is measured without growing).
``--streams-curve`` runs each point in its own process, so each row's peak RSS is its own.

    python perf/bench_scale.py [--steps 10000,100000,1000000,10000000] [--streams 1000]
                               [--per-append 1] [--json]

Asserts nothing; the numbers are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_json, print_table, run
from bench_append import make_event

import aioeventstore as es


async def grow(directory: str, start: int, target: int, streams: int, per: int) -> None:
    async with es.EventStore(directory, durability="os") as store:
        batch = [make_event(i) for i in range(per)]
        one = make_event(0)
        appends = (target - start) // per
        names = [f"s-{k}" for k in range(streams)] if streams <= 100_000 else None

        async def writer(w: int) -> None:
            for k in range(w, appends, 1024):
                j = (start // per + k) % streams
                await store.append(
                    names[j] if names is not None else f"s-{j}", one if per == 1 else batch
                )

        await asyncio.gather(*(writer(w) for w in range(1024)))
        for i in range(target - store.head - 1):
            await store.append(f"s-{i % streams}", make_event(i))


async def measure(directory: str, streams: int, appends: int) -> dict[str, Any]:
    for idx in Path(directory).glob("*.idx"):
        idx.unlink()
    t0 = time.perf_counter()
    store = await es.EventStore(directory).open()
    rescanned = time.perf_counter() - t0
    await store.close()  # writes every segment's sidecar again
    t0 = time.perf_counter()
    store = await es.EventStore(directory).open()
    opened = time.perf_counter() - t0
    at_open = store.head + 1  # the size both open times and the append rate start from
    rec = store.recovery
    assert rec is not None
    try:
        events = [make_event(i) for i in range(1000)]  # the same models whatever the streams
        count = 0

        async def producer(p: int) -> None:
            nonlocal count
            for i in range(p, appends, 1024):
                ev = events[i % 1000]
                await store.append(f"s-{i % streams}", ev)
                count += 1

        t1 = time.perf_counter()
        await asyncio.gather(*(producer(p) for p in range(1024)))
        rate = count / (time.perf_counter() - t1)
        stats = store.statistics()
        return {
            "events": at_open,
            "events_after": stats.head + 1,
            "streams": stats.streams,
            "open_s": opened,
            "open_rescan_s": rescanned,
            "scanned_mb": rec.scanned_bytes / 2**20,
            "disk_mb": sum(p.stat().st_size for p in Path(directory).glob("*.seg")) / 2**20,
            "appends_per_s": rate,
            "index_bytes_per_event": stats.index_bytes / (stats.head + 1),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    finally:
        await store.close()


async def curve_point(args: argparse.Namespace, streams: int) -> dict[str, Any]:
    """One point of the streams curve, in this (fresh) process: grow a store of
    ``--curve-events`` events over ``streams`` streams and measure it."""
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        t0 = time.perf_counter()
        await grow(d, 0, args.curve_events, streams, 1)
        grown = time.perf_counter() - t0
        row = await measure(d, streams, args.appends)
        row["grow_s"] = grown
        return row


def run_curve_child(args: argparse.Namespace, streams: int) -> dict[str, Any]:
    """Run one curve point in a fresh process of this script, so its peak RSS is its own
    (``ru_maxrss`` is the lifetime peak of a process); its row."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-curve", str(streams)]
    cmd += ["--curve-events", str(args.curve_events), "--appends", str(args.appends)]
    cmd += ["--loop", args.loop]
    if args.dir is not None:
        cmd += ["--dir", args.dir]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"curve point {streams} streams failed (exit {out.returncode})")
    row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def streams_curve(args: argparse.Namespace) -> None:
    """A fresh store of ``--curve-events`` events per stream count, each in its own process:
    append rate, index bytes per event and peak RSS as the number of streams grows (the
    events stay the same)."""
    rows: list[dict[str, Any]] = []
    for streams in [int(s) for s in args.streams_curve.split(",")]:
        row = run_curve_child(args, streams)
        rows.append(row)
        if args.json:
            emit_json([row])
        else:
            print(
                f"  {streams:>9,} streams: {row['appends_per_s']:,.0f} appends/s, open "
                f"{row['open_s']:.2f} s, {row['index_bytes_per_event']:.1f} index "
                f"bytes/event, peak RSS {row['peak_rss_mb']:.0f} MB (own process)",
                flush=True,
            )
    if not args.json:
        print()
        print_table(
            rows,
            [
                ("streams", "streams", ",d"),
                ("events", "events in store at open", ",d"),
                ("open_s", "open s", ".2f"),
                ("appends_per_s", "durable appends/s (P=1024)", ",.0f"),
                ("index_bytes_per_event", "index B/event", ".1f"),
                ("peak_rss_mb", "peak RSS MB (own process)", ".0f"),
            ],
        )


async def main(args: argparse.Namespace) -> None:
    if args.child_curve is not None:
        emit_json([await curve_point(args, args.child_curve)])
        return
    steps = [int(s) for s in args.steps.split(",")]
    rows: list[dict[str, Any]] = []
    if not args.json:
        print(
            f"# bench_scale: streams={args.streams} measured appends/step={args.appends} "
            f"cpus={os.cpu_count()}",
            flush=True,
        )
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        size = 0  # events in the store now (the measured appends included)
        for target in steps:
            grown: float | None = None
            if size < target:
                t0 = time.perf_counter()
                await grow(d, size, target, args.streams, args.per_append)
                grown = time.perf_counter() - t0
            row = await measure(d, args.streams, args.appends)
            size = row["events_after"]
            row["step"] = target
            row["grow_s"] = grown
            rows.append(row)
            if args.json:
                emit_json([row])
            else:
                past = "" if grown is not None else f" (already past step {target:,}: not grown)"
                print(
                    f"  {row['events']:>12,} events at open{past}: open {row['open_s']:.2f} s "
                    f"(rescanning {row['open_rescan_s']:.2f} s), "
                    f"{row['appends_per_s']:,.0f} appends/s "
                    f"(-> {row['events_after']:,} events), "
                    f"{row['index_bytes_per_event']:.1f} index bytes/event, "
                    f"peak RSS {row['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    if args.json:
        return
    print()
    print_table(
        rows,
        [
            ("step", "step", ",d"),
            ("events", "events in store at open", ",d"),
            ("events_after", "after measured appends", ",d"),
            ("streams", "streams", ",d"),
            ("disk_mb", "log MB", ",.0f"),
            ("open_s", "open s", ".2f"),
            ("open_rescan_s", "open without sidecars s", ".2f"),
            ("appends_per_s", "durable appends/s (P=1024)", ",.0f"),
            ("index_bytes_per_event", "index B/event", ".1f"),
            ("peak_rss_mb", "peak RSS MB", ".0f"),
        ],
    )


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", default="10000,100000,1000000")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument(
        "--appends", type=int, default=100_000, help="durable appends measured per step"
    )
    ap.add_argument("--per-append", type=int, default=1, help="events per append while growing")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument(
        "--streams-curve",
        default="",
        help="instead of growing one store: a store per stream count, e.g. 10,1000,100000,1000000",
    )
    ap.add_argument("--curve-events", type=int, default=2_000_000)
    ap.add_argument("--child-curve", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", default=None)
    return ap.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.streams_curve and arguments.child_curve is None:
        streams_curve(arguments)  # each point runs in its own process, started from here
    else:
        run(main(arguments), arguments.loop)
