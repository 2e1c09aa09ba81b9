"""Bytes on disk per event, with and without compression, and what compression costs replay.

Workload: bench_append.py's — P producers, one ≈150-byte ``Deposited`` event per append over
1,000 streams, every append durable (fsync) before its ``await`` returns — run for a fixed
number of events into a fresh store with ``compression="none"`` and ``"zstd"``, at P=1024
(batches of hundreds of appends) and P=1 (one append per batch). Event data varies per append
(``amount`` is the append's number). A second payload, ``varied``, replaces most of the memo's
constant letters with random hex, which compresses far less.

*Raw payload* is the MessagePack bytes of the event data (``model_dump(mode="json")``), what
bench_append.py's plain-file peer writes per event: no id, type, stream, position or framing.
``disk/raw`` is the store's segment bytes (headers included) over that; the design goal for
compression is below 1.20 at realistic concurrency.

Replay: the store is closed and reopened (the open time is loading the index sidecars that
the clean close left, one per segment: nothing is scanned or decompressed, so it says little
about compression), then ``read_all()`` into models,
``read_all(raw=True)``, and ``read_stream`` of 50 streams (the worst case for compression: a
stream's events are spread over many containers, each decompressed to read one event).

    python perf/bench_size.py                  # both payloads, P = 1024 and 1
    python perf/bench_size.py --events 200000 --producers 1024 --payload bench --json

Asserts nothing: numbers are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
from _common import emit_json, print_table, run
from bench_append import STREAMS, Deposited, make_event

import aioeventstore as es


def make_varied(i: int, rng: random.Random) -> Deposited:
    memo = f"{rng.getrandbits(160):040x}" + "m" * 40  # 40 random hex digits, then 40 letters
    return Deposited(account=f"acct-{i % STREAMS:04d}", amount=i, currency="EUR", memo=memo)


def events_for(payload: str, n: int) -> list[Deposited]:
    rng = random.Random(7)
    return [make_event(i) if payload == "bench" else make_varied(i, rng) for i in range(n)]


def disk_bytes(directory: str) -> int:
    return sum(
        os.path.getsize(os.path.join(directory, f))
        for f in os.listdir(directory)
        if f.endswith(".seg")
    )


async def write(
    directory: str, events: list[Deposited], producers: int, compression: es.Compression
) -> dict[str, Any]:
    names = [f"acct-{i:04d}" for i in range(STREAMS)]
    async with es.EventStore(directory, compression=compression) as store:
        next_i = 0

        async def producer() -> None:
            nonlocal next_i
            while next_i < len(events):
                i = next_i
                next_i += 1
                await store.append(names[i % STREAMS], events[i])

        t0 = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(producers)))
        elapsed = time.perf_counter() - t0
        st = store.statistics()
    return {"append_per_s": len(events) / elapsed, "events_per_batch": st.events / st.batches}


async def replay(directory: str, repeat: int) -> dict[str, Any]:
    best: dict[str, float] = {}

    def keep(key: str, value: float) -> None:
        best[key] = max(best.get(key, 0.0), value)

    for _ in range(repeat):
        t0 = time.perf_counter()
        store = await es.EventStore(directory).open()
        keep("open_per_s", 1.0 / (time.perf_counter() - t0))
        try:
            n = store.head + 1
            t0 = time.perf_counter()
            count = sum([1 async for _ in store.read_all()])
            keep("replay_per_s", count / (time.perf_counter() - t0))
            assert count == n
            t0 = time.perf_counter()
            count = sum([1 async for _ in store.read_all(raw=True)])
            keep("replay_raw_per_s", count / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            count = 0
            for k in range(0, STREAMS, STREAMS // 50):
                count += sum([1 async for _ in store.read_stream(f"acct-{k:04d}")])
            keep("stream_read_per_s", count / (time.perf_counter() - t0))
        finally:
            await store.close()
    best["open_ms"] = 1e3 / best.pop("open_per_s")
    return best


async def main(args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []
    if not args.json:
        print(
            f"# bench_size: events={args.events} (P=1: {args.events_p1}) streams={STREAMS} "
            f"cpus={os.cpu_count()} python={sys.version.split()[0]} loop={args.loop}",
            flush=True,
        )
    for payload in args.payload.split(","):
        for p in [int(x) for x in args.producers.split(",")]:
            n = args.events if p > 1 else args.events_p1
            events = events_for(payload, n)
            raw = sum(len(msgpack.packb(e.model_dump(mode="json"))) for e in events)
            for compression in ("none", "zstd"):
                with tempfile.TemporaryDirectory(dir=args.dir) as d:
                    row: dict[str, Any] = {
                        "payload": payload,
                        "producers": p,
                        "compression": compression,
                        "events": n,
                    }
                    row.update(await write(d, events, p, compression))
                    size = disk_bytes(d)
                    row["disk_per_event"] = size / n
                    row["raw_per_event"] = raw / n
                    row["disk_over_raw"] = size / raw
                    row.update(await replay(d, args.repeat))
                rows.append(row)
                if args.json:
                    emit_json([row])
                else:
                    print(
                        f"  {payload:6s} P={p:<5d} {compression:4s} "
                        f"{row['disk_per_event']:7.1f} B/event on disk "
                        f"({row['disk_over_raw']:.2f}x raw {row['raw_per_event']:.1f} B), "
                        f"replay {row['replay_per_s']:,.0f}/s",
                        flush=True,
                    )
    if args.json:
        return
    print()
    print_table(
        rows,
        [
            ("payload", "payload", "s"),
            ("producers", "P", "d"),
            ("compression", "compression", "s"),
            ("events_per_batch", "events/batch", ".0f"),
            ("raw_per_event", "raw B/event", ".1f"),
            ("disk_per_event", "disk B/event", ".1f"),
            ("disk_over_raw", "disk/raw", ".2f"),
            ("append_per_s", "appends/s", ",.0f"),
            ("open_ms", "open ms", ".0f"),
            ("replay_per_s", "read_all/s", ",.0f"),
            ("replay_raw_per_s", "raw read_all/s", ",.0f"),
            ("stream_read_per_s", "read_stream/s", ",.0f"),
        ],
    )


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=100_000, help="events per store at P > 1")
    ap.add_argument("--events-p1", type=int, default=3_000, help="events per store at P = 1")
    ap.add_argument("--producers", default="1024,1", help="comma-separated P values")
    ap.add_argument("--payload", default="bench,varied", help="bench, varied or both")
    ap.add_argument("--repeat", type=int, default=2, help="replays per store (best is kept)")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--json", action="store_true", help="one JSON object per row")
    ap.add_argument("--dir", default=None, help="where temp stores go (default: system temp)")
    return ap.parse_args()


if __name__ == "__main__":
    arguments = parse()
    run(main(arguments), arguments.loop)
