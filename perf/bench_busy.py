"""Appends next to a busy event loop: what other work on the loop's thread costs the writer.

16 producers append ≈150-byte events durably (one event per append), alone and then next to
one more task that keeps the event loop's thread busy:

* ``cpu-N``:  pure Python computation in steps of about N µs, ``await asyncio.sleep(0)``
  between them (ours, and the bare group-commit loop of ``_bare.py`` for comparison, whose
  producers msgpack each event per append as ``bench_append.py``'s bare row does);
* ``loads``:  ``read_stream`` of 10-event streams, one after another (ours);
* ``replay``: ``read_all`` of the store over and over (ours).

A busy loop's thread lets go of the GIL at every ``select`` and ``pread`` and takes it back
at once, and CPython then restarts a waiting thread's switch interval: the I/O thread that
writes and syncs each batch, which needs the GIL between its system calls, is starved (see
the README's "A busy event loop starves appends"). The store's own reads lend that thread
the GIL (``IoThread.lend_gil``); other work cannot be made to. Printed: appends/s, their
p50/p99 latency, the ratio to appends alone, and what the busy task got done.

    python perf/bench_busy.py [--seconds S] [--loop uvloop] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
from _bare import BareLog
from _common import emit_json, machine_info, machine_line, percentile, print_table, run
from bench_append import make_event
from bench_load import build_ours, names

import aioeventstore as es

PRODUCERS = 16
STREAMS = 2000  # of 10 events each, for the loads and the replay (--streams)
BUSY_STEPS = (20, 80, 300)  # µs of computation between awaits
Busy = Callable[[Callable[[], bool], list[int]], Coroutine[Any, Any, None]]  # (stopped, count)


def spin_for(us: float) -> int:
    """Loop iterations of ``spin`` that take about ``us`` µs here (measured once)."""
    n = 20_000
    t = time.perf_counter()
    spin(n)
    per = (time.perf_counter() - t) / n
    return max(1, int(us * 1e-6 / per))


def spin(n: int) -> int:
    x = 0
    for k in range(n):
        x += k * k
    return x


async def measure(
    append: Callable[[int, int], Awaitable[None]],
    busy: Busy | None,
    seconds: float,
) -> dict[str, Any]:
    """P producers (and the busy task) for ``seconds`` after a 0.5 s warm-up."""
    latencies = array("d")
    state = {"measuring": False, "stop": False}

    async def producer(p: int) -> None:
        i = p
        while not state["stop"]:
            t = time.perf_counter()
            await append(p, i)
            if state["measuring"]:
                latencies.append(time.perf_counter() - t)
            i += PRODUCERS

    work = [asyncio.create_task(producer(p)) for p in range(PRODUCERS)]
    done = [0]  # the busy task's count of what it got done
    if busy is not None:
        work.append(asyncio.create_task(busy(lambda: bool(state["stop"]), done)))
    await asyncio.sleep(0.5)
    state["measuring"] = True
    before = done[0]
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - t0
    after = done[0]
    state["measuring"] = False
    state["stop"] = True
    await asyncio.gather(*work)
    lat = sorted(latencies)
    return {
        "appends_per_s": len(lat) / elapsed,
        "p50_ms": percentile(lat, 0.5) * 1e3,
        "p99_ms": percentile(lat, 0.99) * 1e3,
        "busy_work_per_s": (after - before) / elapsed,
    }


def cpu_task(us: int) -> Busy:
    n = spin_for(us)

    async def busy(stopped: Callable[[], bool], done: list[int]) -> None:
        while not stopped():
            spin(n)
            done[0] += 1
            await asyncio.sleep(0)

    return busy


async def ours(
    directory: str, busy_kind: str | None, seconds: float, streams: int
) -> dict[str, Any]:
    await build_ours(directory, streams, 10)
    async with es.EventStore(directory) as store:
        events = [make_event(i) for i in range(PRODUCERS)]

        async def append(p: int, i: int) -> None:
            await store.append(f"w-{p}", events[p])

        busy: Busy | None = None
        if busy_kind is not None and busy_kind.startswith("cpu-"):
            busy = cpu_task(int(busy_kind[4:]))
        elif busy_kind == "loads":
            all_names = names(streams)

            async def busy(stopped: Callable[[], bool], done: list[int]) -> None:
                rng = random.Random(1)
                while not stopped():
                    [r async for r in store.read_stream(all_names[rng.randrange(streams)])]
                    done[0] += 1

        elif busy_kind == "replay":

            async def busy(stopped: Callable[[], bool], done: list[int]) -> None:
                while not stopped():
                    async for _ in store.read_all(limit=streams * 10):
                        done[0] += 1

        return await measure(append, busy, seconds)


async def bare(
    directory: str, busy_kind: str | None, seconds: float, streams: int
) -> dict[str, Any]:
    async with BareLog(os.path.join(directory, "bare.log")) as log:
        events = [make_event(i) for i in range(PRODUCERS)]  # the events ours appends
        packb = msgpack.packb

        async def append(p: int, i: int) -> None:
            # encoded per append, as in bench_append.bench_bare (one event per append)
            await log.append(packb((f"w-{p}", "Deposited", events[p].model_dump(mode="json"))))

        busy = cpu_task(int(busy_kind[4:])) if busy_kind is not None else None
        return await measure(append, busy, seconds)


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not args.json:
        info = machine_info(args.loop, args.dir or tempfile.gettempdir())
        print("# bench_busy: durable appends next to a busy event loop")
        print(f"# {machine_line(info)}; {PRODUCERS} producers, {args.seconds:g} s a row")
    plan: list[tuple[str, str | None]] = [("ours", None), ("bare", None)]
    plan += [(s, f"cpu-{us}") for us in BUSY_STEPS for s in ("ours", "bare")]
    plan += [("ours", "loads"), ("ours", "replay")]
    alone: dict[str, float] = {}
    for system, busy_kind in plan:
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            runner = ours if system == "ours" else bare
            row: dict[str, Any] = {"system": system, "busy": busy_kind or "none"}
            row.update(await runner(d, busy_kind, args.seconds, args.streams))
        if busy_kind is None:
            alone[system] = row["appends_per_s"]
        row["ratio_to_alone"] = row["appends_per_s"] / alone[system]
        rows.append(row)
        if args.json:
            emit_json([row])
        else:
            print(
                f"  {system:<5} busy={row['busy']:<7} {row['appends_per_s']:>9,.0f} appends/s",
                flush=True,
            )
    if not args.json:
        print()
        print_table(
            rows,
            [
                ("system", "system", "s"),
                ("busy", "next to", "s"),
                ("appends_per_s", "appends/s", ",.0f"),
                ("p50_ms", "p50 ms", ".2f"),
                ("p99_ms", "p99 ms", ".2f"),
                ("ratio_to_alone", "of alone", ".3f"),
                ("busy_work_per_s", "busy task: steps, loads or events /s", ",.0f"),
            ],
        )
    return rows


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds a row")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--streams", type=int, default=STREAMS, help="10-event streams in the store")
    ap.add_argument("--dir", default=None, help="where the stores are made (default: temp)")
    ap.add_argument("--json", action="store_true", help="one JSON object per row")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.streams < 1:
        ap.error("--seconds and --streams must be positive")
    return args


if __name__ == "__main__":
    cli = parse()
    run(main(cli), cli.loop)
