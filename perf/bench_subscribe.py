"""Subscriptions under load: what live subscribers cost the writer, delivery latency, and
catch-up speed from disk.

1. Append throughput at P producers (single ≈150-byte events over 1,000 streams, durable)
   with 0, 10 and 100 live subscribers that each consume every event and check its model,
   either one by one (``async for rec in sub``, "events") or a list at a time
   (``async for batch in sub.batches()``, "batches"); and, to show the store's own fan-out
   cost apart from the consumers' work, subscribers that only count each list ("counted").
   Printed with the ratio to 0 subscribers. Subscribers run on the writer's event loop, so
   their per-event Python work takes CPU from it: that, not the fan-out, is what the
   "events" and "batches" rows mostly measure.
2. End-to-end latency, append acknowledged → event delivered to a live subscriber, p50/p99
   (signed: a subscriber can be handed an event before its producer's task resumes), and
   append started → delivered.
3. Catch-up: a subscriber starting at position 0 of a store with ``--catchup-events`` events
   (default 1,000,000) consumes to the head, decoding every event into its model; the store
   is built once with one event per append (one frame each, the worst case for the reader)
   and once with 100 events per append. ``read_all`` over the same store for comparison,
   ``read_all(raw=True)``, which hands back the stored dicts without building models, and
   ``read_stream`` of each of the 1,000 streams in turn (each stream's frames lie between
   the other streams' frames, as when aggregates are loaded), and ``read_stream`` of one
   stream of as many events written alone, in a store of its own ("read_stream-alone": its
   frames lie back to back). ``--rounds N`` runs the five reads N times in turn over the
   same stores and adds a table of each one's median, lowest and highest rate: the
   machine's speed drifts between runs by as much as a change would gain, and one round
   shows nothing of that.

    python perf/bench_subscribe.py [--quick] [--catchup-only] [--rounds N] [--loop uvloop] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_json, median, percentile, print_table, run
from bench_append import STREAMS, Deposited, make_event

import aioeventstore as es


async def throughput(
    directory: str, producers: int, subscribers: int, seconds: float, mode: str
) -> dict[str, Any]:
    async with es.EventStore(directory) as store:
        events = [make_event(i) for i in range(STREAMS)]
        names = [f"acct-{i:04d}" for i in range(STREAMS)]
        stop = asyncio.Event()
        delivered = [0] * subscribers

        async def consume(k: int, sub: es.Subscription) -> None:
            n = 0
            if mode == "events":
                async for rec in sub:
                    assert isinstance(rec.data, Deposited)
                    n += 1
                    delivered[k] = n
                    if stop.is_set() and sub.lag == 0:
                        return
            elif mode == "batches":
                async for batch in sub.batches():
                    for rec in batch:
                        assert isinstance(rec.data, Deposited)
                        n += 1
                    delivered[k] = n
                    if stop.is_set() and sub.lag == 0:
                        return
            else:  # "counted": no per-event work at all, so only the store's own cost shows
                async for batch in sub.batches():
                    n += len(batch)
                    delivered[k] = n
                    if stop.is_set() and sub.lag == 0:
                        return

        subs = [store.subscribe(from_position=es.END) for _ in range(subscribers)]
        for sub in subs:
            await sub.__aenter__()
        consumers = [asyncio.create_task(consume(k, s)) for k, s in enumerate(subs)]
        deadline = time.perf_counter() + seconds
        count = 0

        async def producer(p: int) -> None:
            nonlocal count
            i = p
            while time.perf_counter() < deadline:
                await store.append(names[i % STREAMS], events[i % STREAMS])
                count += 1
                i += producers

        t0 = time.perf_counter()
        await asyncio.gather(*(producer(p) for p in range(producers)))
        elapsed = time.perf_counter() - t0
        stop.set()
        await store.append("end", make_event(0))  # wake every consumer for the stop check
        await asyncio.gather(*consumers)
        overflows = sum(s.overflows for s in subs)
        for sub in subs:
            await sub.aclose()
        return {
            "test": "throughput",
            "mode": mode,
            "producers": producers,
            "subscribers": subscribers,
            "events_per_s": count / elapsed,
            "delivered_per_subscriber": (sum(delivered) / subscribers) if subscribers else None,
            "overflows": overflows,
        }


async def latency(directory: str, producers: int, seconds: float) -> dict[str, Any]:
    async with es.EventStore(directory) as store:
        started: dict[int, float] = {}
        acked: dict[int, float] = {}
        delivered: dict[int, float] = {}
        done = asyncio.Event()
        total = [0]

        async with store.subscribe(from_position=es.END) as sub:

            async def consume() -> None:
                async for rec in sub:
                    delivered[rec.position] = time.perf_counter()
                    if done.is_set() and len(delivered) >= total[0]:
                        return

            consumer = asyncio.create_task(consume())
            deadline = time.perf_counter() + seconds

            async def producer(p: int) -> None:
                i = p
                while time.perf_counter() < deadline:
                    t = time.perf_counter()
                    r = await store.append(f"acct-{i % STREAMS:04d}", make_event(i))
                    acked[r.position] = time.perf_counter()
                    started[r.position] = t
                    i += producers

            await asyncio.gather(*(producer(p) for p in range(producers)))
            total[0] = len(acked)
            done.set()
            if len(delivered) < total[0]:
                await consumer
            else:
                consumer.cancel()
    from_ack = sorted(delivered[p] - acked[p] for p in acked)
    from_start = sorted(delivered[p] - started[p] for p in acked)
    return {
        "test": "latency",
        "producers": producers,
        "events": len(acked),
        "ack_to_delivered_p50_ms": percentile(from_ack, 0.5) * 1e3,
        "ack_to_delivered_p99_ms": percentile(from_ack, 0.99) * 1e3,
        "start_to_delivered_p50_ms": percentile(from_start, 0.5) * 1e3,
        "start_to_delivered_p99_ms": percentile(from_start, 0.99) * 1e3,
    }


ALONE = "alone"  # the one stream of the read_stream-alone store


async def build(directory: str, n_events: int, per_append: int, alone: bool = False) -> float:
    """Write ``n_events`` with ``per_append`` events per append (durability "os": the
    layout on disk is the same as with fsync, it only builds faster), over the 1,000
    streams, or all to the one stream ``ALONE`` with ``alone``."""
    t0 = time.perf_counter()
    async with es.EventStore(directory, durability="os") as store:
        events = [make_event(i) for i in range(per_append)]
        appends = n_events // per_append

        async def writer(w: int) -> None:
            for k in range(w, appends, 256):
                batch: Deposited | list[Deposited] = events if per_append > 1 else events[0]
                await store.append(ALONE if alone else f"acct-{k % STREAMS:04d}", batch)

        await asyncio.gather(*(writer(w) for w in range(256)))
        for i in range(n_events - store.head - 1):
            await store.append(ALONE if alone else f"acct-{i % STREAMS:04d}", make_event(i))
    return time.perf_counter() - t0


# the catch-up reads
MODES = ("subscribe", "read_all", "read_all-raw", "read_stream", "read_stream-alone")


def spread(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per catch-up read and events per append: the median, lowest and highest rate over the
    rounds, in the order the reads first ran."""
    out = []
    for (test, per_append), group in itertools.groupby(
        sorted(rows, key=lambda r: (r["events_per_append"], MODES.index(r["test"][8:]))),
        key=lambda r: (r["test"], r["events_per_append"]),
    ):
        rates = [r["events_per_s"] for r in group]
        out.append(
            {
                "test": test,
                "events_per_append": per_append,
                "rounds": len(rates),
                "median_events_per_s": median(rates),
                "min_events_per_s": min(rates),
                "max_events_per_s": max(rates),
            }
        )
    return out


async def catchup(
    directory: str, n_events: int, per_append: int, quiet: bool, rounds: int = 1
) -> list[dict[str, Any]]:
    many_dir = os.path.join(directory, "streams")  # (two stores side by side)
    built = await build(many_dir, n_events, per_append)
    alone_dir = os.path.join(directory, ALONE)
    built_alone = await build(alone_dir, n_events, per_append, alone=True)
    if not quiet:
        print(
            f"  built a store of {n_events:,} events ({per_append} per append) in {built:.1f} s,"
            f" and one of a stream alone in {built_alone:.1f} s",
            flush=True,
        )
    rows = []
    async with es.EventStore(many_dir) as store, es.EventStore(alone_dir) as alone_store:
        for rnd, mode in itertools.product(range(rounds), MODES):
            t = time.perf_counter()
            n = 0
            if mode == "subscribe":
                head = store.head  # nothing is written during the catch-up
                async with store.subscribe(from_position=0) as sub:
                    async for rec in sub:
                        assert isinstance(rec.data, Deposited)
                        n += 1
                        if rec.position == head:
                            break
            elif mode == "read_all":
                async for rec in store.read_all():
                    assert isinstance(rec.data, Deposited)
                    n += 1
            elif mode == "read_all-raw":  # the stored dicts, no models built
                async for rec in store.read_all(raw=True):
                    assert isinstance(rec.data, dict)
                    n += 1
            elif mode == "read_stream-alone":  # one stream written alone: frames back to back
                async for rec in alone_store.read_stream(ALONE):
                    assert isinstance(rec.data, Deposited)
                    n += 1
            else:  # every stream in turn, as aggregates load (their frames interleave in the log)
                for k in range(STREAMS):
                    async for rec in store.read_stream(f"acct-{k:04d}"):
                        assert isinstance(rec.data, Deposited)
                        n += 1
            dt = time.perf_counter() - t
            rows.append(
                {
                    "test": f"catchup-{mode}",
                    "round": rnd + 1,
                    "events_per_append": per_append,
                    "events": n,
                    "seconds": dt,
                    "events_per_s": n / dt,
                }
            )
    return rows


async def main(args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []

    def show(row: dict[str, Any]) -> None:
        rows.append(row)
        if args.json:
            emit_json([row])

    if not args.json:
        print(
            f"# bench_subscribe: loop={args.loop} seconds/row={args.seconds} cpus={os.cpu_count()}",
            flush=True,
        )
    if not args.catchup_only:
        # a short discarded row first: the 0-subscriber baseline is measured once, first, and
        # would otherwise also pay the cold start (imports, allocator, page cache, first files)
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            await throughput(d, args.producers, 0, min(args.seconds, 0.5), "events")
    base = None
    for mode in () if args.catchup_only else ("events", "batches", "counted"):
        for subscribers in (0, 10, 100):
            if subscribers == 0 and base is not None:
                continue
            with tempfile.TemporaryDirectory(dir=args.dir) as d:
                row = await throughput(d, args.producers, subscribers, args.seconds, mode)
            base = base or row["events_per_s"]
            row["ratio_to_0"] = row["events_per_s"] / base
            show(row)
            if not args.json:
                print(
                    f"  P={args.producers} subscribers={subscribers:<4d} ({mode}) "
                    f"{row['events_per_s']:>10,.0f} events/s ({row['ratio_to_0']:.2f}x of 0)",
                    flush=True,
                )
    for producers in () if args.catchup_only else (1, 16):
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            show(await latency(d, producers, args.seconds))
    for per_append in (1, 100):
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            for row in await catchup(d, args.catchup_events, per_append, args.json, args.rounds):
                show(row)
    catchups = [r for r in rows if r["test"].startswith("catchup")]
    if args.json:
        if args.rounds > 1:  # one more line per catch-up read: its spread over the rounds
            emit_json([{**r, "test": f"{r['test']}-spread"} for r in spread(catchups)])
        return
    if not args.catchup_only:
        print()
        print_table(
            [r for r in rows if r["test"] == "throughput"],
            [
                ("producers", "P", "d"),
                ("subscribers", "live subscribers", "d"),
                ("mode", "consumed as", "s"),
                ("events_per_s", "appends/s", ",.0f"),
                ("ratio_to_0", "ratio to 0", ".2f"),
                ("overflows", "buffer overflows", "d"),
            ],
        )
        print()
        print_table(
            [r for r in rows if r["test"] == "latency"],
            [
                ("producers", "P", "d"),
                ("events", "events", ",d"),
                ("ack_to_delivered_p50_ms", "ack→delivered p50 ms", ".3f"),
                ("ack_to_delivered_p99_ms", "ack→delivered p99 ms", ".3f"),
                ("start_to_delivered_p50_ms", "append→delivered p50 ms", ".3f"),
                ("start_to_delivered_p99_ms", "append→delivered p99 ms", ".3f"),
            ],
        )
    print()
    print_table(
        catchups,
        [
            ("test", "catch-up (models decoded)", "s"),
            ("round", "round", "d"),
            ("events_per_append", "events/append", "d"),
            ("events", "events", ",d"),
            ("seconds", "seconds", ".2f"),
            ("events_per_s", "events/s", ",.0f"),
        ],
    )
    if args.rounds > 1:
        print()
        print_table(
            spread(catchups),
            [
                ("test", "catch-up (models decoded)", "s"),
                ("events_per_append", "events/append", "d"),
                ("rounds", "rounds", "d"),
                ("median_events_per_s", "median events/s", ",.0f"),
                ("min_events_per_s", "lowest", ",.0f"),
                ("max_events_per_s", "highest", ",.0f"),
            ],
        )


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--producers", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--catchup-events", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="1 s rows, 200,000-event catch-up")
    ap.add_argument(
        "--catchup-only", action="store_true", help="only the catch-up rows (section 3)"
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="catch-up reads: run them this many times in turn"
    )
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.quick:
        args.seconds = 1.0
        args.catchup_events = min(args.catchup_events, 200_000)
    return args


if __name__ == "__main__":
    arguments = parse()
    run(main(arguments), arguments.loop)
