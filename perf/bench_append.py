"""Durable append throughput and latency: aioeventstore against its peers, in one run.

Workload: P producers, each appending one ≈150-byte event per call to one of 1,000 streams,
every append durable before its ``await`` returns. Each row runs for a fixed time (after a
short warm-up) and counts completed appends. All systems run in this process, one after the
other at each P, on the same disk and the same event loop (``--loop``):

* ours:     aioeventstore, default options (group commit, fdatasync per batch).
* bare:     perf/_bare.py, a bare group-commit loop: producers msgpack their events and queue
            (bytes, future); one task frames the batch (length + CRC32C), one write + one
            fdatasync per batch on one thread. No index, no checks: the limit of Python.
* file:     one ``write`` + ``fdatasync`` per append under an ``asyncio.Lock``, in a worker
            thread (``asyncio.to_thread``), as an asyncio service would do it.
* sqlite:   aiosqlite, WAL, ``synchronous=FULL``, one transaction per append.
* postgres: a throwaway local PostgreSQL server (initdb + postgres from PATH, 127.0.0.1,
            ``fsync=on``, ``synchronous_commit=on``, other settings at their defaults),
            asyncpg, a pool of min(P, 64) connections, one INSERT transaction per append.
            Skipped, with a note, when the binaries or asyncpg are missing. Its rows run
            last, and its server runs only then: its background writers would otherwise
            share the disk with every other system's rows.

Then ours and bare again with 100 events per append call (``--batch-producers`` producers).

    python perf/bench_append.py                      # P = 1, 16, 256, 1024, every system
    python perf/bench_append.py --quick --loop uvloop
    python perf/bench_append.py --only ours,bare --seconds 5
    python perf/bench_append.py --json               # one JSON document on stdout

Prints the machine, then events/s, p50/p99 append latency, events per fsync and the event loop
thread's CPU time per append (``time.thread_time``: producers, commit loop and GC; for the
peers only what runs on the loop thread) for each system and P, and the ratios of ours to each
peer. Asserts nothing: numbers are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
from _bare import BareLog
from _common import machine_info, percentile, print_table, run

import aioeventstore as es

STREAMS = 1000
POOL_MAX = 64  # PostgreSQL connections at most, whatever P is


class Deposited(es.Event):
    account: str
    amount: int
    currency: str
    memo: str


def make_event(i: int) -> Deposited:
    # ≈150 bytes as stored: type name, msgpack data and the entry header
    return Deposited(account=f"acct-{i % STREAMS:04d}", amount=i, currency="EUR", memo="m" * 80)


def data_size() -> int:
    """Bytes of one event's data, msgpack-packed (the payload alone)."""
    return len(msgpack.packb(make_event(1).model_dump(mode="json")))


def encoded_size() -> int:
    """Bytes of one event's entry in the log (FORMAT.md "Event entry": length, event id, type
    name, data); the frame's own header (stream, position, CRC) is not counted."""
    return data_size() + len("Deposited") + 26


NAMES = [f"acct-{k:04d}" for k in range(STREAMS)]


@dataclass
class Settings:
    """What every system's runner gets besides P."""

    directory: str  # a fresh empty directory for this row
    seconds: float
    warmup: float
    per_append: int = 1  # events per append call
    dsn: str | None = None  # the throwaway PostgreSQL server


Append = Callable[[int, int], Awaitable[None]]  # (producer, i)
Runner = Callable[[Settings, int], Awaitable[dict[str, Any]]]


async def drive(append: Append, producers: int, seconds: float, per_append: int) -> dict[str, Any]:
    """Run P producers flat out for ``seconds``; return rates and latency percentiles.

    The clock stops when the last append started before the deadline has returned.
    Latencies are kept as raw doubles (``array``), not float objects in a list: a list of
    a million floats is walked by every full GC collection, a cost of the harness that
    would be charged to whatever system is measured.
    """
    latencies = array("d")
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
    cpu0 = time.thread_time()  # the event loop thread's CPU: producers, commit loop, GC
    deadline = t0 + seconds
    started.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    cpu = time.thread_time() - cpu0
    ordered = sorted(latencies)
    appends = len(ordered)
    return {
        "appends": appends,
        "events": appends * per_append,
        "seconds": round(elapsed, 4),
        "appends_per_s": appends / elapsed,
        "events_per_s": appends * per_append / elapsed,
        "p50_ms": percentile(ordered, 0.50) * 1e3,
        "p99_ms": percentile(ordered, 0.99) * 1e3,
        "loop_cpu_us_per_append": cpu / appends * 1e6 if appends else None,
    }


async def measure(append: Append, producers: int, s: Settings) -> dict[str, Any]:
    """A warm-up run, then the measured one."""
    if s.warmup > 0:
        await drive(append, producers, s.warmup, s.per_append)
    return await drive(append, producers, s.seconds, s.per_append)


def batches(per_append: int) -> list[list[Deposited]]:
    """For each stream, the events of one append call."""
    if per_append == 1:
        return [[make_event(k)] for k in range(STREAMS)]
    return [[make_event(k + STREAMS * j) for j in range(per_append)] for k in range(STREAMS)]


async def bench_ours(s: Settings, producers: int) -> dict[str, Any]:
    calls = batches(s.per_append)
    async with es.EventStore(s.directory) as store:
        if s.per_append == 1:
            singles = [c[0] for c in calls]

            async def append(p: int, i: int) -> None:
                k = i % STREAMS
                await store.append(NAMES[k], singles[k])

        else:

            async def append(p: int, i: int) -> None:
                k = i % STREAMS
                await store.append(NAMES[k], calls[k])

        if s.warmup > 0:
            await drive(append, producers, s.warmup, s.per_append)
        before = store.statistics()
        row = await drive(append, producers, s.seconds, s.per_append)
        after = store.statistics()
    syncs = after.syncs - before.syncs
    row["events_per_fsync"] = (after.events - before.events) / syncs if syncs else None
    return row


async def bench_bare(s: Settings, producers: int) -> dict[str, Any]:
    calls = batches(s.per_append)
    packb = msgpack.packb
    async with BareLog(os.path.join(s.directory, "bare.log")) as log:
        # The producer encodes, as ours does: the same event objects, through msgpack.
        if s.per_append == 1:
            singles = [c[0] for c in calls]

            async def append(p: int, i: int) -> None:
                k = i % STREAMS
                event = singles[k]
                await log.append(packb((NAMES[k], "Deposited", event.model_dump(mode="json"))))

        else:

            async def append(p: int, i: int) -> None:
                k = i % STREAMS
                body = [("Deposited", e.model_dump(mode="json")) for e in calls[k]]
                await log.append(packb((NAMES[k], body)))

        if s.warmup > 0:
            await drive(append, producers, s.warmup, s.per_append)
        batches_before, appends_before = log.batches, log.appends
        row = await drive(append, producers, s.seconds, s.per_append)
        syncs = log.batches - batches_before
        events = (log.appends - appends_before) * s.per_append
    row["events_per_fsync"] = events / syncs if syncs else None
    return row


def payloads() -> list[bytes]:
    return [msgpack.packb(make_event(k).model_dump(mode="json")) for k in range(STREAMS)]


async def bench_file(s: Settings, producers: int) -> dict[str, Any]:
    path = os.path.join(s.directory, "events.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sync = getattr(os, "fdatasync", os.fsync)
    lines = payloads()
    lock = asyncio.Lock()

    def write(data: bytes) -> None:
        os.write(fd, data)
        sync(fd)

    async def append(p: int, i: int) -> None:
        async with lock:
            await asyncio.to_thread(write, lines[i % STREAMS])

    try:
        row = await measure(append, producers, s)
    finally:
        os.close(fd)
    row["events_per_fsync"] = 1.0
    return row


async def bench_sqlite(s: Settings, producers: int) -> dict[str, Any]:
    import aiosqlite

    db = await aiosqlite.connect(os.path.join(s.directory, "events.db"), isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute(
            "CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT NOT NULL, "
            "version INTEGER NOT NULL, type TEXT NOT NULL, data BLOB NOT NULL, "
            "UNIQUE (stream, version))"
        )
        data = payloads()
        versions = [0] * STREAMS
        lock = asyncio.Lock()  # one connection: transactions must not interleave

        async def append(p: int, i: int) -> None:
            k = i % STREAMS
            async with lock:
                v = versions[k]
                versions[k] += 1
                await db.execute("BEGIN")
                await db.execute(
                    "INSERT INTO events (stream, version, type, data) VALUES (?, ?, ?, ?)",
                    (NAMES[k], v, "Deposited", data[k]),
                )
                await db.execute("COMMIT")

        row = await measure(append, producers, s)
    finally:
        await db.close()
    row["events_per_fsync"] = 1.0  # WAL with synchronous=FULL: one WAL sync per commit
    return row


async def bench_postgres(s: Settings, producers: int) -> dict[str, Any]:
    import asyncpg

    assert s.dsn is not None
    size = min(producers, POOL_MAX)
    pool = await asyncpg.create_pool(s.dsn, min_size=size, max_size=size)
    try:
        await pool.execute("DROP TABLE IF EXISTS events")
        await pool.execute(
            "CREATE TABLE events (position bigserial PRIMARY KEY, stream text NOT NULL, "
            "version bigint NOT NULL, type text NOT NULL, data bytea NOT NULL, "
            "UNIQUE (stream, version))"
        )
        data = payloads()
        versions = [0] * STREAMS
        insert = "INSERT INTO events (stream, version, type, data) VALUES ($1, $2, $3, $4)"

        async def append(p: int, i: int) -> None:
            k = i % STREAMS
            v = versions[k]
            versions[k] += 1
            # autocommit: the statement is its own transaction, committed (WAL flushed,
            # synchronous_commit=on) before the server answers
            await pool.execute(insert, NAMES[k], v, "Deposited", data[k])

        row = await measure(append, producers, s)
    finally:
        await pool.close()
    row["events_per_fsync"] = None  # PostgreSQL groups WAL flushes itself; not counted here
    row["pool"] = size
    return row


SYSTEMS: dict[str, Runner] = {
    "ours": bench_ours,
    "bare": bench_bare,
    "file": bench_file,
    "sqlite": bench_sqlite,
    "postgres": bench_postgres,
}
PEERS = [name for name in SYSTEMS if name != "ours"]
MANY = ("ours", "bare")  # the systems that also run the many-events-per-append rows


def missing(system: str) -> str | None:
    """Why a system cannot run here (a missing client library), or None."""
    module = {"sqlite": "aiosqlite", "postgres": "asyncpg"}.get(system)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return f"{system} skipped: {module} is not installed (pip install -e '.[bench]')"
    return None


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ours events/s over each peer's, per (P, events per append)."""
    out = []
    for ours in rows:
        if ours["system"] != "ours":
            continue
        ratio: dict[str, Any] = {
            "producers": ours["producers"],
            "events_per_append": ours["events_per_append"],
        }
        for r in rows:
            same = (r["producers"], r["events_per_append"]) == (
                ours["producers"],
                ours["events_per_append"],
            )
            if same and r["system"] != "ours" and r["events_per_s"]:
                ratio[f"ours_over_{r['system']}"] = ours["events_per_s"] / r["events_per_s"]
        out.append(ratio)
    return out


def versions(systems: list[str]) -> dict[str, str]:
    """Versions of what is measured."""
    from importlib.metadata import version

    out = {"aioeventstore": es.__version__, "msgpack": version("msgpack")}
    if "sqlite" in systems:
        import sqlite3

        out["aiosqlite"] = version("aiosqlite")
        out["sqlite"] = sqlite3.sqlite_version
    if "postgres" in systems:
        out["asyncpg"] = version("asyncpg")
    return out


async def bench(
    args: argparse.Namespace,
    systems: list[str],
    server: Callable[[], contextlib.AbstractContextManager[str]] | None,
    show: Callable[[dict[str, Any]], None],
    notes: list[str],
) -> list[dict[str, Any]]:
    """Every row, one system after the other at each P, then the many-events rows, then the
    PostgreSQL rows: its throwaway server (``server``) runs only while they are measured, so
    that its background writers (WAL writer, checkpointer) share the disk with no one else's
    row. Rows are returned in table order (P, then system)."""
    plan = [(p, 1, system) for p in args.producers for system in systems if system != "postgres"]
    if args.batch_size > 1:
        plan += [
            (p, args.batch_size, s) for p in args.batch_producers for s in systems if s in MANY
        ]
    if "postgres" in systems:
        plan += [(p, 1, "postgres") for p in args.producers]
    # SIGTERM during any row cancels this task, which unwinds every row's store and temporary
    # directory (and the PostgreSQL server) and ends the run with CancelledError. A handler
    # that raised from wherever the loop happens to be could kill a store's internal task
    # and leave the clean-up waiting on it for ever.
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    loop.add_signal_handler(signal.SIGTERM, me.cancel)
    try:
        return await bench_rows(args, systems, server, show, notes, plan)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def bench_rows(
    args: argparse.Namespace,
    systems: list[str],
    server: Callable[[], contextlib.AbstractContextManager[str]] | None,
    show: Callable[[dict[str, Any]], None],
    notes: list[str],
    plan: list[tuple[int, int, str]],
) -> list[dict[str, Any]]:
    """``bench``'s rows, in the order of ``plan`` ((P, events per append, system))."""
    rows = []
    with contextlib.ExitStack() as stack:
        dsn: str | None = None
        for producers, per_append, system in plan:
            if system == "postgres" and dsn is None:
                import _postgres

                assert server is not None
                try:
                    dsn = stack.enter_context(server())
                except _postgres.Unavailable as exc:
                    notes.append(f"postgres skipped: {exc}")
                    systems.remove("postgres")
                    break
            rows.append(await measure_row(args, system, producers, per_append, dsn, show))
    order = {system: k for k, system in enumerate(systems)}
    rows.sort(key=lambda r: (r["events_per_append"], r["producers"], order[r["system"]]))
    return rows


async def measure_row(
    args: argparse.Namespace,
    system: str,
    producers: int,
    per_append: int,
    dsn: str | None,
    show: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """One row in a fresh directory."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{system}-", dir=args.dir) as d:
        settings = Settings(d, args.seconds, args.warmup, per_append, dsn)
        measured = await SYSTEMS[system](settings, producers)
    row = {"system": system, "producers": producers, "events_per_append": per_append, **measured}
    show(row)
    return row


def show_row(out: Any) -> Callable[[dict[str, Any]], None]:
    def show(row: dict[str, Any]) -> None:
        per = row["events_per_append"]
        print(
            f"  {row['system']:8s} P={row['producers']:<5d} events/append={per:<4d}"
            f"{row['events_per_s']:>11,.0f} events/s  p50 {row['p50_ms']:7.2f} ms  "
            f"p99 {row['p99_ms']:7.2f} ms",
            file=out,
            flush=True,
        )

    return show


def print_header(info: dict[str, Any], args: argparse.Namespace, systems: list[str]) -> None:
    out = sys.stderr if args.json else sys.stdout
    load = info["load_average"]
    lines = [
        "# bench_append: durable appends, aioeventstore against its peers",
        f"# machine: {info['cpus']} CPUs, {info['cpu_model']}, {info['kernel']}, "
        f"{info['python']}, loop {info['loop']}",
        f"# disk: {info['directory']} on {info['filesystem'] or '?'}; load average "
        + (" ".join(f"{x:.2f}" for x in load) if load else "?"),
        f"# versions: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}",
        f"# workload: events of {data_size()} bytes of msgpack data ({encoded_size()}-byte log "
        "entries: data, event id and type name; frame headers not counted) over "
        f"{STREAMS:,} streams, durable before each await returns; {args.seconds:g} s per row "
        f"after a {args.warmup:g} s warm-up",
        f"# systems: {', '.join(systems) or 'none'}",
    ]
    lines += [f"# note: {note}" for note in info["notes"]]
    print("\n".join(lines), file=out, flush=True)


def print_tables(rows: list[dict[str, Any]], systems: list[str], args: argparse.Namespace) -> None:
    singles = [r for r in rows if r["events_per_append"] == 1]
    many = [r for r in rows if r["events_per_append"] > 1]
    print("\n## one event per append")
    print_table(
        singles,
        [
            ("system", "system", "s"),
            ("producers", "P", "d"),
            ("events_per_s", "events/s", ",.0f"),
            ("p50_ms", "p50 ms", ".2f"),
            ("p99_ms", "p99 ms", ".2f"),
            ("events_per_fsync", "events/fsync", ",.1f"),
            ("loop_cpu_us_per_append", "loop CPU µs/append", ".2f"),
        ],
    )
    table = ratios(rows)
    peers = [p for p in PEERS if p in systems]
    if "ours" in systems and peers:
        print("\n## ours / peer (events/s; above 1: ours is faster)")
        print_table(
            [r for r in table if r["events_per_append"] == 1],
            [("producers", "P", "d")] + [(f"ours_over_{p}", f"ours/{p}", ".2f") for p in peers],
        )
    if many:
        print(f"\n## {args.batch_size} events per append")
        print_table(
            many,
            [
                ("system", "system", "s"),
                ("producers", "P", "d"),
                ("events_per_s", "events/s", ",.0f"),
                ("appends_per_s", "appends/s", ",.0f"),
                ("p50_ms", "p50 ms", ".2f"),
                ("p99_ms", "p99 ms", ".2f"),
                ("events_per_fsync", "events/fsync", ",.0f"),
            ],
        )
        for r in table:
            if r["events_per_append"] > 1 and "ours_over_bare" in r:
                print(f"ours / bare at P={r['producers']}: {r['ours_over_bare']:.2f}")
        for r in many:
            if r["system"] == "ours":
                verdict = "met" if r["events_per_s"] >= 500_000 else "not met"
                print(f"bar (ours >= 500,000 events/s) at P={r['producers']}: {verdict}")


def main() -> int:
    args = parse()
    systems = args.systems
    notes: list[str] = []
    for system in list(systems):
        why = missing(system)
        if why is not None:
            notes.append(why)
            systems.remove(system)
    info = machine_info(args.loop, args.dir or tempfile.gettempdir())
    info["versions"] = versions(systems)
    info["notes"] = notes
    server: Callable[[], contextlib.AbstractContextManager[str]] | None = None
    if "postgres" in systems:
        import _postgres

        try:
            binary = _postgres.find_binaries()["postgres"]
            info["versions"]["postgres"] = _postgres.server_version(binary)
            server = functools.partial(_postgres.throwaway_server, args.dir)
        except _postgres.Unavailable as exc:
            notes.append(f"postgres skipped: {exc}")
            systems.remove("postgres")
    print_header(info, args, systems)
    show = show_row(sys.stderr if args.json else sys.stdout)
    rows = run(bench(args, systems, server, show, notes), args.loop)
    if args.json:
        document = {
            "machine": {k: v for k, v in info.items() if k != "notes"},
            "workload": {
                "event_bytes": encoded_size(),  # the log entry: data, event id, type name
                "event_data_bytes": data_size(),  # the data alone, msgpack-packed
                "streams": STREAMS,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "systems": systems,
            },
            "notes": notes,
            "rows": rows,
            "ratios": ratios(rows),
        }
        print(json.dumps(document, indent=1, sort_keys=True))
    else:
        print_tables(rows, systems, args)
    return 0


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--producers", default="1,16,256,1024", help="comma-separated P values")
    ap.add_argument("--seconds", type=float, default=None, help="measured seconds per row (3)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds per row (0.5)")
    ap.add_argument("--quick", action="store_true", help="1 s per row: about a minute in all")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ap.add_argument("--no-peers", dest="peers", action="store_false", help="only ours")
    ap.add_argument(
        "--only", default=None, help=f"comma-separated systems to run ({', '.join(SYSTEMS)})"
    )
    ap.add_argument("--batch-size", type=int, default=100, help="events per append, last rows")
    ap.add_argument(
        "--batch-producers",
        default="16,64",
        help="comma-separated P values for those rows (0 or empty: no such rows)",
    )
    ap.add_argument("--dir", default=None, help="where temp stores go (default: system temp)")
    args = ap.parse_args()
    args.producers = [int(p) for p in args.producers.split(",") if p.strip()]
    args.batch_producers = [
        p for p in (int(x) for x in args.batch_producers.split(",") if x.strip()) if p > 0
    ]
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = min(0.2 if args.quick else 0.5, args.seconds)
    if args.only is not None:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SYSTEMS]
        if unknown:
            ap.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
        args.systems = [n for n in SYSTEMS if n in names]
    else:
        args.systems = list(SYSTEMS) if args.peers else ["ours"]
    return args


if __name__ == "__main__":
    try:
        sys.exit(main())
    except asyncio.CancelledError:  # SIGTERM (see bench): every row's directory is removed
        print("terminated", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:  # everything started has been stopped and deleted by now
        print("interrupted", file=sys.stderr)
        sys.exit(130)
