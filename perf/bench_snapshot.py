"""Loading an aggregate with and without a snapshot.

One stream of ``--events`` events (default 100,000; ≈150-byte ``Deposited`` events, appended
100 per call) is folded into an account aggregate (balance, count, per-currency and per-day
totals) with ``es.load_aggregate``:

* ``full replay``: no snapshot, every event read from disk, decoded into its model and folded;
* ``snapshot``: a snapshot at the stream's last version, nothing to fold after it;
* ``snapshot + K``: a snapshot with ``--tail`` (default 1,000) events appended after it.

Each load runs ``--repeat`` times on one open store (the page cache is warm, as it is for a
service that loads aggregates); the median is printed with the ratio to the full replay. The
time to save the snapshot (encode, write, fsync, rename, fsync the directory) and its size are
printed too. Every load's state is checked against the full replay's.

The store goes in a temporary directory, removed at the end, or in ``--dir``, which must be
empty or new (a previous run's store would be measured instead).

    python perf/bench_snapshot.py [--events N] [--tail K] [--repeat R] [--loop uvloop] [--json]
                                  [--dir EMPTY_DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_json, median, print_table, run
from bench_append import Deposited
from pydantic import BaseModel

import aioeventstore as es

STREAM = "account-42"


class Account(BaseModel):
    """The aggregate: what a fold over the account's events gives."""

    balance: int = 0
    deposits: int = 0
    by_currency: dict[str, int] = {}
    by_day: dict[int, int] = {}


def apply(state: Account, rec: es.RecordedEvent) -> Account:
    data = rec.data
    assert isinstance(data, Deposited)
    state.balance += data.amount
    state.deposits += 1
    state.by_currency[data.currency] = state.by_currency.get(data.currency, 0) + data.amount
    day = rec.version // 1000  # ~100 buckets over 100,000 events: a state of a few KiB
    state.by_day[day] = state.by_day.get(day, 0) + 1
    return state


def event(i: int) -> Deposited:
    return Deposited(
        account="42", amount=i % 1000, currency=("EUR", "USD", "CHF")[i % 3], memo="m" * 80
    )


async def append_events(store: es.EventStore, start: int, n: int) -> None:
    for lo in range(start, start + n, 100):
        await store.append(STREAM, [event(i) for i in range(lo, min(lo + 100, start + n))])


async def load(store: es.EventStore, repeat: int) -> tuple[float, es.Snapshot[Account]]:
    times: list[float] = []
    result: es.Snapshot[Account] | None = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = await es.load_aggregate(store, STREAM, Account, apply)
        times.append(time.perf_counter() - t)
    assert result is not None
    return median(times), result


async def main(args: argparse.Namespace, directory: Path) -> None:
    rows: list[dict[str, Any]] = []
    async with es.EventStore(directory / "store") as store:
        t = time.perf_counter()
        await append_events(store, 0, args.events)
        built = time.perf_counter() - t
        if not args.json:
            print(f"{args.events:,} events in one stream, written in {built:.1f} s ({directory})")

        full_s, full = await load(store, args.repeat)
        rows.append({"load": "full replay", "events": args.events, "seconds": full_s})

        t = time.perf_counter()
        assert await store.save_snapshot(STREAM, full.state, full.version)
        save_s = time.perf_counter() - t
        (snap_file,) = (directory / "store").glob("*.snap")
        snap_s, got = await load(store, args.repeat)
        assert got == full, "a snapshot load must equal the full replay"
        rows.append({"load": "snapshot", "events": 0, "seconds": snap_s})

        await append_events(store, args.events, args.tail)
        truth = full.state.model_copy(deep=True)
        async for rec in store.read_stream(STREAM, from_version=full.version + 1):
            truth = apply(truth, rec)
        tail_s, got = await load(store, args.repeat)
        assert got == (truth, args.events + args.tail - 1), "snapshot + tail equals a replay"
        rows.append({"load": f"snapshot + {args.tail:,}", "events": args.tail, "seconds": tail_s})
    for row in rows:
        row["ms"] = row["seconds"] * 1000
        row["speedup"] = full_s / row["seconds"]
    if args.json:
        emit_json([*rows, {"save_snapshot_s": save_s, "snapshot_bytes": snap_file.stat().st_size}])
        return
    print_table(
        rows,
        [
            ("load", "load", ""),
            ("events", "events folded", ",d"),
            ("ms", "median ms", ".2f"),
            ("speedup", "ratio full/this", ".0f"),
        ],
    )
    print(
        f"save_snapshot: {save_s * 1000:.2f} ms (encode, write, fsync, rename, fsync dir); "
        f"snapshot file {snap_file.stat().st_size:,} bytes"
    )
    print(f"full replay / snapshot load = {full_s / snap_s:.0f}x")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--tail", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", default=None)
    return ap.parse_args()


if __name__ == "__main__":
    args = parse()
    if args.dir is not None:
        given = Path(args.dir)
        if given.exists() and (not given.is_dir() or any(given.iterdir())):
            print(
                f"bench_snapshot: --dir {given} is not empty (or not a directory): give a "
                "new or empty one (a previous run's store would be measured instead)",
                file=sys.stderr,
            )
            sys.exit(2)
        run(main(args, given), args.loop)
    else:
        with tempfile.TemporaryDirectory(prefix="aioeventstore-bench-snapshot-") as tmp:
            run(main(args, Path(tmp)), args.loop)
