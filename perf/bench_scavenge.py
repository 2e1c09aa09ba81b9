"""How long a scavenge takes, and what it frees: a store with half of its streams deleted.

The store is filled with ``--streams`` streams x ``--events`` events (default 1,000 x 200 =
200,000 events, appended one event per append, interleaved across streams so that every
segment holds events of every stream, with ``durability="os"`` to get there quickly) and a
small ``--segment-bytes`` (default 1 MiB) so that there are many sealed segments. Then every
other stream is soft-deleted and ``store.scavenge()`` runs once; the script prints the log's
bytes before and after, what was rewritten or dropped, and the seconds it took, and checks
that reads still see exactly the surviving events.

    python perf/bench_scavenge.py [--streams 1000] [--events 200] [--segment-bytes 1048576]
                                  [--loop asyncio|uvloop] [--json]

Asserts nothing about speed; the numbers are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
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


async def fill(directory: str, streams: int, events: int, segment_bytes: int) -> None:
    async with es.EventStore(directory, durability="os", segment_bytes=segment_bytes) as store:
        payloads = [make_event(i) for i in range(streams)]

        async def writer(w: int) -> None:  # 64 producers, round-robin over the streams
            for k in range(w, streams * events, 64):
                await store.append(f"s-{k % streams}", payloads[k % streams])

        await asyncio.gather(*(writer(w) for w in range(64)))


async def measure(directory: str, streams: int, events: int, segment_bytes: int) -> dict[str, Any]:
    async with es.EventStore(directory, segment_bytes=segment_bytes) as store:
        segments = len(store._log.segments)
        t0 = time.perf_counter()
        for s in range(0, streams, 2):
            await store.delete_stream(f"s-{s}")
        deleting = time.perf_counter() - t0
        report = await store.scavenge()
        t0 = time.perf_counter()
        survivors = 0
        async for rec in store.read_all(raw=True):
            if int(rec.stream[2:]) % 2 == 0:
                raise AssertionError(f"hidden event {rec.stream}@{rec.version} was read")
            survivors += 1
        replay = time.perf_counter() - t0
        # the even streams (s-0, s-2, ...) were deleted: the odd ones, events each, survive
        expected = streams // 2 * events
        if survivors != expected:
            raise AssertionError(f"read {survivors:,} surviving events, expected {expected:,}")
        return {
            "segments": segments,
            "rewritten": report.segments_rewritten,
            "dropped": report.segments_dropped,
            "events_removed": report.events_removed,
            "survivors": survivors,
            "mb_before": report.bytes_before / 1e6,
            "mb_after": report.bytes_after / 1e6,
            "delete_s": deleting,
            "scavenge_s": report.duration,
            "mb_per_s": report.bytes_before / 1e6 / report.duration,
            "replay_s": replay,
        }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="aioes-scavenge-") as tmp:
        directory = str(Path(tmp) / "store")
        t0 = time.perf_counter()
        await fill(directory, args.streams, args.events, args.segment_bytes)
        filled = time.perf_counter() - t0
        row = await measure(directory, args.streams, args.events, args.segment_bytes)
        row["fill_s"] = filled
        row["events"] = args.streams * args.events
    if args.json:
        emit_json([row])
        return
    print(
        f"{args.streams} streams x {args.events} events, segment_bytes={args.segment_bytes}, "
        f"half the streams soft-deleted, then one scavenge:"
    )
    print_table(
        [row],
        [
            ("segments", "segments", "d"),
            ("rewritten", "rewritten", "d"),
            ("dropped", "dropped", "d"),
            ("events_removed", "removed", "d"),
            ("survivors", "left", "d"),
            ("mb_before", "MB before", ".1f"),
            ("mb_after", "MB after", ".1f"),
            ("scavenge_s", "scavenge s", ".2f"),
            ("mb_per_s", "MB/s", ".0f"),
            ("delete_s", "deletes s", ".2f"),
            ("replay_s", "replay after s", ".2f"),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--segment-bytes", type=int, default=1 << 20)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    run(main(args), args.loop)
