"""Durable append throughput and latency: aioeventstore against its peers, in one run.

Workload: P producers, each appending one ≈150-byte event per call to one of 1,000 streams,
every append durable before its ``await`` returns. Each row runs for a fixed time and counts
completed appends. Peers, on the same disk and loop:

* sqlite: aiosqlite, WAL, ``synchronous=FULL``, one transaction per append.
* file:   one ``write`` + ``fdatasync`` per append under an ``asyncio.Lock``, in a worker
          thread (``asyncio.to_thread``) as an asyncio service would do it.

    python perf/bench_append.py                      # P = 1, 16, 256, 1024, all systems
    python perf/bench_append.py --quick --loop uvloop
    python perf/bench_append.py --json               # one JSON object per row

Prints events/s, p50/p99 append latency, events per fsync (ours), and the ratios of ours to
each peer at each P. Asserts nothing: numbers are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_json, percentile, print_table, run

import aioeventstore as es

STREAMS = 1000


class Deposited(es.Event):
    account: str
    amount: int
    currency: str
    memo: str


def make_event(i: int) -> Deposited:
    # ≈150 bytes as stored: type name, msgpack data and the entry header
    return Deposited(account=f"acct-{i % STREAMS:04d}", amount=i, currency="EUR", memo="m" * 80)


def encoded_size() -> int:
    import msgpack

    return len(msgpack.packb(make_event(1).model_dump(mode="json"))) + len("Deposited") + 26


Append = Callable[[int, int], Awaitable[None]]  # (producer, i)


async def drive(append: Append, producers: int, seconds: float) -> dict[str, Any]:
    """Run P producers flat out for ``seconds``; return rate and latency percentiles."""
    latencies: list[float] = []
    deadline = 0.0
    started = asyncio.Event()

    async def producer(p: int) -> None:
        await started.wait()
        i = p
        clock = time.perf_counter
        lat = latencies
        while True:
            t0 = clock()
            if t0 >= deadline:
                return
            await append(p, i)
            lat.append(clock() - t0)
            i += producers

    tasks = [asyncio.create_task(producer(p)) for p in range(producers)]
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    deadline = t0 + seconds
    started.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "events": len(latencies),
        "seconds": elapsed,
        "events_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
    }


async def bench_ours(directory: str, producers: int, seconds: float) -> dict[str, Any]:
    async with es.EventStore(directory) as store:
        events = [make_event(i) for i in range(STREAMS)]
        names = [f"acct-{i:04d}" for i in range(STREAMS)]

        async def append(p: int, i: int) -> None:
            k = i % STREAMS
            await store.append(names[k], events[k])

        await drive(append, producers, min(0.3, seconds))  # warm up
        before = store.statistics()
        row = await drive(append, producers, seconds)
        after = store.statistics()
        syncs = after.syncs - before.syncs
        row["events_per_fsync"] = (after.events - before.events) / syncs if syncs else None
    return row


async def bench_sqlite(directory: str, producers: int, seconds: float) -> dict[str, Any]:
    import aiosqlite

    db = await aiosqlite.connect(os.path.join(directory, "events.db"), isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute(
            "CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT NOT NULL, "
            "version INTEGER NOT NULL, type TEXT NOT NULL, data BLOB NOT NULL, "
            "UNIQUE (stream, version))"
        )
        import msgpack

        payloads = [msgpack.packb(make_event(i).model_dump(mode="json")) for i in range(STREAMS)]
        versions = [0] * STREAMS

        async def append(p: int, i: int) -> None:
            k = i % STREAMS
            v = versions[k]
            versions[k] += 1
            await db.execute("BEGIN")
            await db.execute(
                "INSERT INTO events (stream, version, type, data) VALUES (?, ?, ?, ?)",
                (f"acct-{k:04d}", v, "Deposited", payloads[k]),
            )
            await db.execute("COMMIT")

        lock = asyncio.Lock()  # one connection: transactions must not interleave

        async def locked_append(p: int, i: int) -> None:
            async with lock:
                await append(p, i)

        await drive(locked_append, producers, min(0.3, seconds))
        row = await drive(locked_append, producers, seconds)
        row["events_per_fsync"] = 1.0
        return row
    finally:
        await db.close()


async def bench_file(directory: str, producers: int, seconds: float) -> dict[str, Any]:
    import msgpack

    fd = os.open(
        os.path.join(directory, "events.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
    )
    sync = getattr(os, "fdatasync", os.fsync)
    lines = [msgpack.packb(make_event(i).model_dump(mode="json")) for i in range(STREAMS)]
    lock = asyncio.Lock()

    def write(data: bytes) -> None:
        os.write(fd, data)
        sync(fd)

    async def append(p: int, i: int) -> None:
        async with lock:
            await asyncio.to_thread(write, lines[i % STREAMS])

    try:
        await drive(append, producers, min(0.3, seconds))
        row = await drive(append, producers, seconds)
        row["events_per_fsync"] = 1.0
        return row
    finally:
        os.close(fd)


SYSTEMS: dict[str, Callable[[str, int, float], Awaitable[dict[str, Any]]]] = {
    "aioeventstore": bench_ours,
    "sqlite-wal-full": bench_sqlite,
    "file-fsync-each": bench_file,
}


async def main(args: argparse.Namespace) -> None:
    producers = [int(p) for p in args.producers.split(",")]
    systems = [s for s in SYSTEMS if s == "aioeventstore" or args.peers]
    rows: list[dict[str, Any]] = []
    random.seed(1)
    if not args.json:
        print(
            f"# bench_append: loop={args.loop} seconds/row={args.seconds} "
            f"event≈{encoded_size()} bytes streams={STREAMS} cpus={os.cpu_count()} "
            f"python={sys.version.split()[0]}",
            flush=True,
        )
    for p in producers:
        for system in systems:
            with tempfile.TemporaryDirectory(dir=args.dir) as d:
                row = await SYSTEMS[system](d, p, args.seconds)
            row.update(system=system, producers=p, loop=args.loop)
            rows.append(row)
            if args.json:
                emit_json([row])
            else:
                print(
                    f"  {system:16s} P={p:<5d} {row['events_per_s']:>10,.0f} events/s  "
                    f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms",
                    flush=True,
                )
    ratios = []
    for p in producers:
        ours = next(r for r in rows if r["system"] == "aioeventstore" and r["producers"] == p)
        ratio: dict[str, Any] = {"producers": p}
        for r in rows:
            if r["producers"] == p and r["system"] != "aioeventstore":
                ratio[f"x_{r['system']}"] = ours["events_per_s"] / r["events_per_s"]
        ratios.append(ratio)
    if args.json:
        emit_json([{"ratios": ratios}])
        return
    print()
    print_table(
        rows,
        [
            ("system", "system", "s"),
            ("producers", "P", "d"),
            ("events_per_s", "events/s", ",.0f"),
            ("p50_ms", "p50 ms", ".2f"),
            ("p99_ms", "p99 ms", ".2f"),
            ("events_per_fsync", "events/fsync", ".1f"),
        ],
    )
    if args.peers:
        print()
        cols = [("producers", "P", "d")] + [
            (f"x_{s}", f"ours / {s}", ".2f") for s in SYSTEMS if s != "aioeventstore"
        ]
        print_table(ratios, cols)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--producers", default="1,16,256,1024", help="comma-separated P values")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per row")
    ap.add_argument("--quick", action="store_true", help="1 s per row")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--json", action="store_true", help="one JSON object per row")
    ap.add_argument("--no-peers", dest="peers", action="store_false", help="only aioeventstore")
    ap.add_argument("--dir", default=None, help="where temp stores go (default: system temp)")
    args = ap.parse_args()
    if args.quick:
        args.seconds = 1.0
    return args


if __name__ == "__main__":
    arguments = parse()
    run(main(arguments), arguments.loop)
