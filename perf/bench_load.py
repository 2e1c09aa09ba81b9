"""Aggregate loads: reading one short stream whole, into models, as a service does before it
handles a command. aioeventstore against SQLite with a table, in one run.

The store holds ``--streams`` streams (default 10,000) of ``--events`` events each (default
10 and 100), the ≈150-byte events of bench_append.py, written one event per append with
the streams taking turns, as a service writes them: each stream's events lie apart in the
log. Each round loads every stream once, in a shuffled order, and builds every event's
model. Systems:

* ours:        ``[rec async for rec in store.read_stream(s)]``.
* sqlite:      aiosqlite (what an asyncio service uses), the table of bench_append.py
               (``UNIQUE (stream, version)``), ``SELECT ... WHERE stream = ? ORDER BY
               version``, then ``Deposited.model_validate(msgpack.unpackb(data))`` per row.
* sqlite-sync: the same query with the standard library's sqlite3 on the event loop's own
               thread: no thread trip per query, but the loop waits on every read (a
               floor that an asyncio service would not usually accept).

Both stores are read from the page cache (both were just written). Printed: loads/s,
events/s and the latency of one load (p50/p99), the median of ``--rounds`` rounds for
rates, and the ratio of ours to each peer. Asserts nothing: numbers are for reading.

    python perf/bench_load.py [--quick] [--streams N] [--events 10,100] [--rounds N]
                              [--loop uvloop] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
from _common import emit_json, machine_info, machine_line, median, percentile, print_table, run
from bench_append import Deposited

import aioeventstore as es

SYSTEMS = ("ours", "sqlite", "sqlite-sync")
Load = Callable[[str], Awaitable[int]]  # loads a stream whole; returns its event count


def names(streams: int) -> list[str]:
    return [f"agg-{k:06d}" for k in range(streams)]


def event(stream: str, version: int) -> Deposited:
    return Deposited(account=stream, amount=version, currency="EUR", memo="m" * 80)


async def build_ours(directory: str, streams: int, per_stream: int) -> None:
    """Every stream's events, one append each, the streams taking turns (256 writers;
    durability "os": the layout on disk is the one fsync gives, built faster)."""
    all_names = names(streams)
    async with es.EventStore(directory, durability="os") as store:

        async def writer(w: int) -> None:
            for v in range(per_stream):
                for k in range(w, streams, 256):
                    await store.append(all_names[k], event(all_names[k], v))

        await asyncio.gather(*(writer(w) for w in range(min(256, streams))))


def build_sqlite(path: str, streams: int, per_stream: int) -> None:
    """The same events in bench_append.py's table, in the same order, in one transaction."""
    all_names = names(streams)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT NOT NULL, "
            "version INTEGER NOT NULL, type TEXT NOT NULL, data BLOB NOT NULL, "
            "UNIQUE (stream, version))"
        )
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO events (stream, version, type, data) VALUES (?, ?, ?, ?)",
            (
                (s, v, "Deposited", msgpack.packb(event(s, v).model_dump(mode="json")))
                for v in range(per_stream)
                for s in all_names
            ),
        )
        db.execute("COMMIT")
    finally:
        db.close()


QUERY = "SELECT version, type, data FROM events WHERE stream = ? ORDER BY version"


def to_models(rows: Any) -> list[Deposited]:
    return [Deposited.model_validate(msgpack.unpackb(data)) for _v, _t, data in rows]


async def measure(load: Load, order: list[str], per_stream: int) -> dict[str, Any]:
    """Load every stream in ``order`` once, one after another; rates and latencies."""
    latencies = array("d")
    clock = time.perf_counter
    t0 = clock()
    events = 0
    for stream in order:
        t = clock()
        got = await load(stream)
        latencies.append(clock() - t)
        if got != per_stream:
            raise AssertionError(f"{stream}: {got} events, expected {per_stream}")
        events += got
    elapsed = clock() - t0
    lat = sorted(latencies)
    return {
        "loads_per_s": len(order) / elapsed,
        "events_per_s": events / elapsed,
        "p50_us": percentile(lat, 0.5) * 1e6,
        "p99_us": percentile(lat, 0.99) * 1e6,
    }


async def rounds_of(
    system: str, directory: str, streams: int, per_stream: int, rounds: int, seed: int
) -> list[dict[str, Any]]:
    """``rounds`` rounds of loads on ``system``'s store in ``directory`` (built already)."""
    rng = random.Random(seed)
    orders = [rng.sample(names(streams), streams) for _ in range(rounds)]
    out = []
    if system == "ours":
        async with es.EventStore(directory) as store:

            async def load(stream: str) -> int:
                recs = [rec async for rec in store.read_stream(stream)]
                assert type(recs[-1].data) is Deposited
                return len(recs)

            for order in orders:
                out.append(await measure(load, order, per_stream))
    elif system == "sqlite":
        import aiosqlite

        db = await aiosqlite.connect(os.path.join(directory, "events.db"))
        try:

            async def load_aio(stream: str) -> int:
                async with db.execute(QUERY, (stream,)) as cur:
                    return len(to_models(await cur.fetchall()))

            for order in orders:
                out.append(await measure(load_aio, order, per_stream))
        finally:
            await db.close()
    else:
        sync_db = sqlite3.connect(os.path.join(directory, "events.db"))
        try:

            async def load_sync(stream: str) -> int:
                return len(to_models(sync_db.execute(QUERY, (stream,)).fetchall()))

            for order in orders:
                out.append(await measure(load_sync, order, per_stream))
        finally:
            sync_db.close()
    return out


async def one_length(args: argparse.Namespace, per_stream: int) -> dict[str, dict[str, Any]]:
    """Build both stores with ``per_stream`` events per stream; each system's row (the
    median of its rounds, with the lowest and highest load rate)."""
    with (
        tempfile.TemporaryDirectory(dir=args.dir) as ours_dir,
        tempfile.TemporaryDirectory(dir=args.dir) as sqlite_dir,
    ):
        t0 = time.perf_counter()
        await build_ours(ours_dir, args.streams, per_stream)
        built_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_sqlite(os.path.join(sqlite_dir, "events.db"), args.streams, per_stream)
        built_sqlite = time.perf_counter() - t0
        if not args.json:
            print(
                f"\n## {per_stream} events per stream ({args.streams * per_stream:,} events; "
                f"built in {built_ours:.1f} s ours, {built_sqlite:.1f} s SQLite)",
                flush=True,
            )
        by_system = {}
        for system in args.systems:
            where = ours_dir if system == "ours" else sqlite_dir
            got = await rounds_of(system, where, args.streams, per_stream, args.rounds, args.seed)
            by_system[system] = {
                "test": "load",
                "system": system,
                "events_per_stream": per_stream,
                "streams": args.streams,
                "rounds": len(got),
                **{k: median([r[k] for r in got]) for k in got[0]},
                "min_loads_per_s": min(r["loads_per_s"] for r in got),
                "max_loads_per_s": max(r["loads_per_s"] for r in got),
            }
    return by_system


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not args.json:
        info = machine_info(args.loop, args.dir or tempfile.gettempdir())
        print("# bench_load: aggregate loads (a short stream read whole, into models)")
        print(f"# {machine_line(info)}; SQLite {sqlite3.sqlite_version}")
        print(
            f"# {args.streams:,} streams of each length, written one event per append with the "
            f"streams taking turns; {args.rounds} round(s), each stream loaded once a round",
            flush=True,
        )
    for per_stream in args.events:
        by_system = await one_length(args, per_stream)
        rows += by_system.values()
        ours = by_system.get("ours")
        for system, row in by_system.items():
            if ours is not None and system != "ours":
                row["ours_over"] = ours["loads_per_s"] / row["loads_per_s"]
        if args.json:
            emit_json(list(by_system.values()))
            continue
        print_table(
            list(by_system.values()),
            [
                ("system", "system", "s"),
                ("loads_per_s", "loads/s", ",.0f"),
                ("min_loads_per_s", "lowest", ",.0f"),
                ("max_loads_per_s", "highest", ",.0f"),
                ("events_per_s", "events/s", ",.0f"),
                ("p50_us", "p50 µs", ".1f"),
                ("p99_us", "p99 µs", ".1f"),
                ("ours_over", "ours/it", ".2f"),
            ],
        )
        print(flush=True)
    return rows


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=10_000, help="streams of each length")
    ap.add_argument(
        "--events",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10, 100],
        help="events per stream, comma-separated (a store for each)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds of loads over each store")
    ap.add_argument("--systems", type=lambda s: s.split(","), default=list(SYSTEMS))
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--quick", action="store_true", help="2,000 streams, one round")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", default=None, help="where the stores are made (default: temp)")
    ap.add_argument("--json", action="store_true", help="one JSON object per row")
    args = ap.parse_args(argv)
    if args.quick:
        args.streams, args.rounds = min(args.streams, 2000), 1
    for system in args.systems:
        if system not in SYSTEMS:
            ap.error(f"unknown system {system!r}: choose from {', '.join(SYSTEMS)}")
    if args.streams < 1 or args.rounds < 1 or min(args.events) < 1:
        ap.error("--streams, --rounds and --events must be at least 1")
    return args


if __name__ == "__main__":
    cli = parse()
    run(main(cli), cli.loop)
