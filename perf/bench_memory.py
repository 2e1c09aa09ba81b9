"""What the in-memory store costs compared with a disk store, and what running its file
operations inline (instead of on I/O and reader threads) buys.

Three stores on the same workload, in one run: ``EventStore.memory()`` as shipped (inline),
the same in-memory file system driven through thread pools as a disk store is ("memory,
threads"), and a disk store with ``durability="os"`` (no fsync: the nearest disk peer). For
each: single-event appends at P=1 and P=256 concurrent producers, one ``read_all`` of
everything, and short lives (open, append one event, read it, close), as a test suite has.

    python perf/bench_memory.py [--appends 20000] [--loop asyncio|uvloop] [--json]

Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_json, print_table, run
from bench_append import make_event

import aioeventstore as es
from aioeventstore._fs import FileHandle, Lock
from aioeventstore._memfs import MemoryFileSystem


async def append_rate(store: es.EventStore, n: int, producers: int) -> float:
    per = n // producers

    async def producer(p: int) -> None:
        for i in range(per):
            await store.append(f"acc-{(p * per + i) % 1000}", make_event(i))

    t0 = time.perf_counter()
    await asyncio.gather(*(producer(p) for p in range(producers)))
    return per * producers / (time.perf_counter() - t0)


async def measure(name: str, make: Callable[[], es.EventStore], n: int) -> dict[str, Any]:
    row: dict[str, Any] = {"store": name}
    t0 = time.perf_counter()
    for _ in range(200):  # what a test suite does over and over
        async with make() as store:
            await store.append("s", make_event(0))
            assert [r async for r in store.read_all()]
    row["cycles"] = 200 / (time.perf_counter() - t0)
    async with make() as store:
        row["p1"] = await append_rate(store, n // 4, 1)
        row["p256"] = await append_rate(store, n, 256)
        t0 = time.perf_counter()
        count = sum([1 async for _ in store.read_all()])
        row["read"] = count / (time.perf_counter() - t0)
    return row


class ThreadedMemoryFS:
    """The in-memory file system, under a type the store does not recognise: the store then
    runs its file operations on I/O and reader threads, as for a disk."""

    def __init__(self) -> None:
        self._fs = MemoryFileSystem()

    def open(self, path: str, *, write: bool, create: bool = False) -> FileHandle:
        return self._fs.open(path, write=write, create=create)

    def listdir(self, path: str) -> list[str]:
        return self._fs.listdir(path)

    def makedirs(self, path: str) -> None:
        self._fs.makedirs(path)

    def remove(self, path: str) -> None:
        self._fs.remove(path)

    def rename(self, src: str, dst: str) -> None:
        self._fs.rename(src, dst)

    def sync_dir(self, path: str) -> None:
        self._fs.sync_dir(path)

    def lock(self, path: str) -> Lock:
        return self._fs.lock(path)


async def main(args: argparse.Namespace) -> None:
    rows = []
    n = itertools.count()
    with tempfile.TemporaryDirectory() as tmp:
        stores: list[tuple[str, Callable[[], es.EventStore]]] = [
            ("memory (inline)", es.EventStore.memory),
            ("memory, threads", lambda: es.EventStore(":memory:", _fs=ThreadedMemoryFS())),
            (
                "disk, durability=os",
                lambda: es.EventStore(Path(tmp) / str(next(n)), durability="os"),
            ),
        ]
        for name, make in stores:
            rows.append(await measure(name, make, args.appends))
    if args.json:
        emit_json(rows)
    else:
        print_table(
            rows,
            [
                ("store", "store", ""),
                ("p1", "appends/s P=1", ",.0f"),
                ("p256", "appends/s P=256", ",.0f"),
                ("read", "read_all events/s", ",.0f"),
                ("cycles", "open+append+read+close/s", ",.0f"),
            ],
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appends", type=int, default=20_000)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    run(main(a), a.loop)
